//! Load benchmark: requests/s and latency of chat completions sent straight to an upstream
//! versus through weir (and nginx, when installed, as a reference), on the same machine in
//! the same run.
//!
//! One process hosts the mock OpenAI upstream and a closed-loop load generator; weir and
//! nginx run as child processes. Rounds alternate between targets so every target sees the
//! same machine conditions. See `benches/README.md` for the knobs and what each number means.
//!
//! `WEIR_BENCH_PROFILE=production` runs the `weir` target with everything on
//! (`common::production_config`) and a plain weir beside it as `weir-plain`, so the cost of
//! the features is a ratio measured in the same run. `WEIR_BENCH_MODES=paced` holds 1,000
//! streams paced as a model sends them through weir and nginx and compares their CPU per
//! chunk.
//!
//! Beside them runs the hyper floor (`examples/hyper_floor.rs`, built on first use; off with
//! `WEIR_BENCH_FLOOR=0`): hyper's HTTP/1 server and client on weir's worker model with nothing
//! in between, so each run also says how much of weir's distance to nginx is its own code and
//! how much the stack it is built on.

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

use common::loadgen::{Load, Samples, cpu_time, round, run_round, tree_cpu_time};
use common::recorded;
use common::streams::{Streams, hold_streams};
use common::{ms, percentile};

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
    /// Whether to run the hyper floor beside weir (`WEIR_BENCH_FLOOR`, on by default).
    floor: bool,
    /// Closed-loop modes (`json`, `stream`); may be empty when only `paced` runs.
    modes: Vec<Mode>,
    profile: Profile,
    paced: Option<Paced>,
}

/// What the `weir` target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// `common::plain_config`: one model, no auth, nothing recorded.
    Plain,
    /// `common::production_config`, with a plain weir beside it as `weir-plain`.
    Production,
}

/// The paced mode: many long streams at a model's pace, for CPU per chunk.
#[derive(Debug, Clone)]
struct Paced {
    streams: usize,
    chunks: usize,
    gap: Duration,
    open_per_sec: f64,
    max_connecting: usize,
}

impl Params {
    fn from_env() -> Params {
        let (modes, paced) = parse_modes(&std::env::var("WEIR_BENCH_MODES").unwrap_or_default());
        let profile = match std::env::var("WEIR_BENCH_PROFILE").as_deref() {
            Ok("production") => Profile::Production,
            Ok("plain" | "") | Err(_) => Profile::Plain,
            Ok(other) => panic!("WEIR_BENCH_PROFILE={other:?}: expected `plain` or `production`"),
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
            floor: common::env_or("WEIR_BENCH_FLOOR", 1u8) != 0,
            modes,
            profile,
            paced: paced.then(|| Paced {
                streams: common::env_or("WEIR_BENCH_PACED_STREAMS", 1000usize).max(1),
                chunks: common::env_or("WEIR_BENCH_PACED_CHUNKS", 50usize).max(2),
                gap: Duration::from_secs_f64(common::env_or("WEIR_BENCH_PACED_GAP_MS", 100.0f64).max(0.0) / 1000.0),
                open_per_sec: common::env_or("WEIR_BENCH_PACED_OPEN_PER_SEC", 4000.0f64).max(1.0),
                max_connecting: common::env_or("WEIR_BENCH_PACED_MAX_CONNECTING", 256usize).max(1),
            }),
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
            "modes": self.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "profile": match self.profile { Profile::Plain => "plain", Profile::Production => "production" },
            "paced": self.paced.as_ref().map(|p| json!({
                "streams": p.streams, "chunks_target": p.chunks, "gap_ms": p.gap.as_secs_f64() * 1000.0,
                "open_per_sec": p.open_per_sec, "max_connecting": p.max_connecting,
            })),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    }

    /// The weir that the gateway-core targets (× direct, × nginx, latency, RSS < 50 MiB)
    /// are judged on: the plain one.
    fn plain_target(&self) -> Target {
        match self.profile {
            Profile::Plain => Target::Weir,
            Profile::Production => Target::WeirPlain,
        }
    }
}

/// `WEIR_BENCH_MODES`: `json`, `stream` and `paced`, separated by commas or spaces; unset or
/// empty means `json,stream`.
fn parse_modes(text: &str) -> (Vec<Mode>, bool) {
    let words: Vec<&str> = text.split([',', ' ']).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return (vec![Mode::Json, Mode::Stream], false);
    }
    let mut modes = Vec::new();
    let mut paced = false;
    for word in words {
        match word {
            "json" => modes.push(Mode::Json),
            "stream" => modes.push(Mode::Stream),
            "paced" => paced = true,
            other => panic!("WEIR_BENCH_MODES: unknown mode {other:?} (json, stream, paced)"),
        }
    }
    modes.sort_unstable();
    modes.dedup();
    (modes, paced)
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
    /// weir with the profile's config (plain, or everything on).
    Weir,
    /// A plain weir beside a production `weir`, for production ÷ plain in one run.
    WeirPlain,
    /// A second weir build (`WEIR_BENCH_BIN_B`) with the profile's config, for an A/B of two
    /// builds in one run.
    WeirB,
    /// The floor of weir's stack (`examples/hyper_floor.rs`): hyper's server and client and
    /// nothing else, so a run says how much of weir's gap to nginx is the stack's.
    HyperFloor,
    Nginx,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Weir => "weir",
            Target::WeirPlain => "weir-plain",
            Target::WeirB => "weir-b",
            Target::HyperFloor => "hyper-floor",
            Target::Nginx => "nginx",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The targets and their processes

/// One target and, for weir and nginx, the process behind it.
struct Member {
    target: Target,
    addr: SocketAddr,
    process: Process,
}

enum Process {
    /// The upstream itself, in this process.
    None,
    Weir {
        weir: common::Weir,
        /// Its own trace collector when it runs the production profile, so its spans are
        /// counted apart from any other weir's.
        sink: Option<common::OtlpSink>,
    },
    Nginx(common::Nginx),
    HyperFloor(common::HyperFloor),
}

impl Member {
    fn weir(&self) -> Option<&common::Weir> {
        match &self.process {
            Process::Weir { weir, .. } => Some(weir),
            _ => None,
        }
    }

    /// CPU time so far of the process serving this target (nginx: master and workers).
    fn cpu(&self) -> Option<Duration> {
        match &self.process {
            Process::None => None,
            Process::Weir { weir, .. } => cpu_time(weir.process.pid()),
            Process::Nginx(nginx) => tree_cpu_time(nginx.process.pid()),
            Process::HyperFloor(floor) => cpu_time(floor.process.pid()),
        }
    }

    fn production(&self) -> Option<(&common::Weir, &common::OtlpSink)> {
        match &self.process {
            Process::Weir { weir, sink: Some(sink) } => Some((weir, sink)),
            _ => None,
        }
    }
}

/// Starts the targets in front of `upstream`: direct (unless `with_direct` is false), weir
/// with the profile's config, `weir-plain` under the production profile, `weir-b` when
/// `WEIR_BENCH_BIN_B` is set, and nginx when wanted and installed.
async fn start_targets(upstream: SocketAddr, params: &Params, with_direct: bool) -> Vec<Member> {
    let mut members = Vec::new();
    if with_direct {
        members.push(Member { target: Target::Direct, addr: upstream, process: Process::None });
    }
    members.push(start_profile_weir(Target::Weir, upstream, params.profile, None).await);
    if params.profile == Profile::Production {
        members.push(start_profile_weir(Target::WeirPlain, upstream, Profile::Plain, None).await);
    }
    if let Ok(binary) = std::env::var("WEIR_BENCH_BIN_B") {
        members.push(start_profile_weir(Target::WeirB, upstream, params.profile, Some(binary)).await);
    }
    if params.floor
        && let Some(floor) = common::start_hyper_floor(upstream).await
    {
        members.push(Member { target: Target::HyperFloor, addr: floor.addr, process: Process::HyperFloor(floor) });
    }
    if params.nginx {
        match common::start_nginx(upstream, &params.nginx_workers).await {
            Some(nginx) => {
                members.push(Member { target: Target::Nginx, addr: nginx.addr, process: Process::Nginx(nginx) })
            }
            None => {
                eprintln!("nginx not found; running without the nginx reference (apt-get install -y nginx to add it)")
            }
        }
    }
    members
}

async fn start_profile_weir(target: Target, upstream: SocketAddr, profile: Profile, binary: Option<String>) -> Member {
    let (config, sink) = match profile {
        Profile::Plain => (common::plain_config(upstream), None),
        Profile::Production => {
            let sink = common::start_otlp_sink().await;
            (common::production_config(upstream, sink.addr), Some(sink))
        }
    };
    let weir = common::start_weir_bin(&config, binary).await;
    Member { target, addr: weir.addr, process: Process::Weir { weir, sink } }
}

/// The request a mode sends. Under the production profile every body is unique (the
/// production weir's cache misses every time) and carries the bench key; every target gets
/// the same, so the load generator does the same work for each.
fn load_for(body: bytes::Bytes, expected: usize, profile: Profile) -> Load {
    let load = Load::chat(body, expected);
    match profile {
        Profile::Plain => load,
        Profile::Production => load.unique().with_headers(common::bench_key_headers()),
    }
}

/// The weirs' peak RSS (`VmHWM`) marks reset; false if any could not be.
fn reset_weir_peaks(members: &[Member]) -> bool {
    members.iter().filter_map(Member::weir).all(|w| common::reset_peak_rss(w.process.pid()))
}

// ---------------------------------------------------------------------------------------------
// Closed-loop phases

struct Phase {
    name: &'static str,
    connections: usize,
    duration: Duration,
}

/// Per mode and target: the merged samples, each round's req/s, and the CPU the target's
/// process used in its rounds.
#[derive(Default)]
struct PhaseResults {
    samples: BTreeMap<(Mode, Target), (Samples, Vec<f64>)>,
    cpu: BTreeMap<(Mode, Target), Duration>,
}

/// Runs `rounds` rounds of every mode over every target, rotating which target goes first.
/// Adds every request sent to `sent` (per target).
async fn run_phase(
    phase: &Phase,
    params: &Params,
    members: &[Member],
    bodies: &common::Bodies,
    sent: &mut BTreeMap<Target, u64>,
) -> PhaseResults {
    let mut results = PhaseResults::default();
    for &mode in &params.modes {
        let load = match mode {
            Mode::Json => load_for(bodies.request_json.clone(), bodies.response_json.len(), params.profile),
            Mode::Stream => load_for(bodies.request_stream.clone(), bodies.sse_len(), params.profile),
        };
        for r in 0..params.rounds {
            let n = members.len();
            for i in 0..n {
                let member = &members[(i + r) % n];
                let cpu_before = member.cpu();
                let samples = run_round(member.addr, &load, phase.connections, phase.duration).await;
                if let (Some(before), Some(after)) = (cpu_before, member.cpu()) {
                    *results.cpu.entry((mode, member.target)).or_default() += after.saturating_sub(before);
                }
                eprintln!(
                    "  {:<8} {:<12} round {} {:<10} {:>9.0} req/s  errors {}",
                    phase.name,
                    mode.name(),
                    r + 1,
                    member.target.name(),
                    samples.rps(),
                    samples.errors
                );
                *sent.entry(member.target).or_default() += samples.sent;
                let entry = results.samples.entry((mode, member.target)).or_default();
                entry.1.push(samples.rps());
                entry.0.merge(samples);
            }
        }
    }
    results
}

/// The closed-loop part: warm-up, the load phase (throughput, peak RSS), the latency phase,
/// then what the production weirs recorded.
async fn run_closed_loop(params: &Params, report: &mut Value) {
    let bodies = common::plan_bodies(params.chunks);
    let upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&bodies.sse_chunks),
        first_gap: params.first_gap,
        gap: params.gap,
    })
    .await;
    let members = start_targets(upstream, params, true).await;
    println!(
        "weir load bench ({} profile): {} connections, {} rounds x {:.1} s, request {} B, JSON answer {} B, \
         stream {} chunks / {} B (gap {} µs), {} cpus",
        match params.profile {
            Profile::Plain => "plain",
            Profile::Production => "production",
        },
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
    let mut sent = BTreeMap::new();

    // Warm-up: connection pools, allocator arenas, page cache.
    if !params.warmup.is_zero() {
        let warm = Params { rounds: 1, ..params.clone() };
        let phase = Phase { name: "warm-up", connections: params.connections, duration: params.warmup };
        run_phase(&phase, &warm, &members, &bodies, &mut sent).await;
    }

    let rss_reset = reset_weir_peaks(&members);
    let phase = Phase { name: "load", connections: params.connections, duration: params.duration };
    let mut load = run_phase(&phase, params, &members, &bodies, &mut sent).await;
    let rss = weir_rss(&members);

    let mut latency = PhaseResults::default();
    if params.latency_connections > 0 && !params.latency_duration.is_zero() {
        let phase =
            Phase { name: "latency", connections: params.latency_connections, duration: params.latency_duration };
        latency = run_phase(&phase, params, &members, &bodies, &mut sent).await;
    }

    report["bodies"] = json!({
        "request_bytes": bodies.request_json.len(),
        "response_json_bytes": bodies.response_json.len(),
        "stream_chunks": bodies.sse_chunks.len(),
        "stream_bytes": bodies.sse_len(),
    });
    report["load"] = print_phase(
        &format!("{} concurrent connections (throughput)", params.connections),
        &mut load,
        params,
        &members,
    );
    if !latency.samples.is_empty() {
        report["latency"] = print_phase(
            &format!("{} connection(s) (latency without queueing)", params.latency_connections),
            &mut latency,
            params,
            &members,
        );
    }
    println!("\nweir RSS under the {}-connection load:", params.connections);
    for (name, figures) in rss.as_object().into_iter().flatten() {
        println!(
            "  {name:<10} peak (VmHWM) {} MiB{}, now {} MiB",
            figures["peak_under_load_mib"].as_f64().map_or("?".into(), |m| format!("{m:.1}")),
            if rss_reset { "" } else { " (peak since start: clear_refs unavailable)" },
            figures["after_load_mib"].as_f64().map_or("?".into(), |m| format!("{m:.1}")),
        );
    }
    report["rss"] = rss;
    report["rss_peak_reset_before_load"] = json!(rss_reset);
    report["recorded"] = count_recorded(&members, &sent, "closed loop").await;
}

/// Each weir's peak RSS since the reset, and its RSS now, by target name.
fn weir_rss(members: &[Member]) -> Value {
    let mut out = json!({});
    for member in members {
        let Some(weir) = member.weir() else { continue };
        let pid = weir.process.pid();
        let peak = common::proc_status_bytes(pid, "VmHWM").map(common::mib);
        let now = common::proc_status_bytes(pid, "VmRSS").map(common::mib);
        out[member.target.name()] = json!({
            "peak_under_load_mib": peak.map(|m| round(m, 2)),
            "after_load_mib": now.map(|m| round(m, 2)),
        });
    }
    out
}

/// What each production weir recorded of the requests sent to it (every phase, warm-up
/// included): dataset records and sampled traces, printed and returned by target name.
async fn count_recorded(members: &[Member], sent: &BTreeMap<Target, u64>, what: &str) -> Value {
    let mut out = json!({});
    for member in members {
        let Some((weir, sink)) = member.production() else { continue };
        let sent = sent.get(&member.target).copied().unwrap_or(0);
        let dataset = recorded::count_dataset(weir, common::PRODUCTION_DATASET, sent).await;
        let traces =
            recorded::count_traces(sink, common::SpanTally::default(), sent, common::PRODUCTION_SAMPLE_RATIO).await;
        println!("\n{} recorded ({what}):\n  {}\n  {}", member.target.name(), dataset.line(), traces.line());
        out[member.target.name()] = json!({"dataset": dataset.to_json(), "traces": traces.to_json()});
    }
    out
}

/// Prints one phase's table and returns it as JSON: per target its rates, latencies, CPU per
/// request, its ratio to direct (and to nginx, and to the plain weir under the production
/// profile, per round too) and the latency it adds over direct.
fn print_phase(title: &str, results: &mut PhaseResults, params: &Params, members: &[Member]) -> Value {
    println!("\n== {title} ==");
    println!(
        "{:<12} {:<10} {:>10} {:>8} {:>9} {:>9} {:>10} {:>10} {:>7} {:>11} {:>10}",
        "mode",
        "target",
        "req/s",
        "x direct",
        "p50 ms",
        "p99 ms",
        "ttfb p50",
        "ttfb p99",
        "errors",
        "rounds x",
        "CPU µs/req"
    );
    let mut out = json!({});
    for &mode in &params.modes {
        let Some(direct) = results.samples.get_mut(&(mode, Target::Direct)).map(|(s, r)| (s.summary(), r.clone()))
        else {
            continue;
        };
        let mut mode_json = json!({});
        for member in members {
            let target = member.target;
            let Some((samples, per_round)) = results.samples.get_mut(&(mode, target)) else { continue };
            let s = samples.summary();
            let ratio = s.rps / direct.0.rps.max(1e-9);
            let round_ratios = ratios(per_round, &direct.1);
            let cpu_us = results.cpu.get(&(mode, target)).map(|cpu| cpu.as_secs_f64() * 1e6 / s.requests.max(1) as f64);
            println!(
                "{:<12} {:<10} {:>10.0} {:>8.3} {:>9.3} {:>9.3} {:>10.3} {:>10.3} {:>7} {:>11} {:>10}",
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
                cpu_us.map_or(String::new(), |c| format!("{c:.1}")),
            );
            if let Some(err) = &samples.first_error {
                println!("    first error: {err}");
            }
            let mut t = s.to_json();
            t["cpu_us_per_request"] = json!(cpu_us.map(|c| round(c, 1)));
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
        print_added(mode, members, &mode_json);
        for (of, to, key) in comparisons(params) {
            let (Some((a, a_rounds)), Some((b, b_rounds))) =
                (results.samples.get(&(mode, of)), results.samples.get(&(mode, to)))
            else {
                continue;
            };
            let ratio = a.rps() / b.rps().max(1e-9);
            let rounds = ratios(a_rounds, b_rounds);
            println!(
                "  {} {} ÷ {}: {ratio:.3} (rounds {})",
                mode.name(),
                of.name(),
                to.name(),
                rounds.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join("/")
            );
            mode_json[of.name()][key] = json!(round(ratio, 4));
            mode_json[of.name()][format!("{key}_rounds")] = json!(rounds);
        }
        out[mode.name()] = mode_json;
    }
    out
}

/// `a[i] / b[i]` per round.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| round(a / b.max(1e-9), 3)).collect()
}

/// The throughput ratios printed beside ×direct: each weir against nginx, and under the
/// production profile the production weirs against the plain one. `(of, to, json key)`.
fn comparisons(params: &Params) -> Vec<(Target, Target, &'static str)> {
    let mut pairs = vec![
        (Target::Weir, Target::Nginx, "ratio_vs_nginx"),
        (Target::WeirPlain, Target::Nginx, "ratio_vs_nginx"),
        (Target::WeirB, Target::Nginx, "ratio_vs_nginx"),
        (Target::HyperFloor, Target::Nginx, "ratio_vs_nginx"),
        (Target::WeirPlain, Target::HyperFloor, "ratio_vs_floor"),
    ];
    if params.profile == Profile::Plain {
        pairs.push((Target::Weir, Target::HyperFloor, "ratio_vs_floor"));
    }
    if params.profile == Profile::Production {
        pairs.push((Target::Weir, Target::WeirPlain, "ratio_vs_plain"));
        pairs.push((Target::WeirB, Target::WeirPlain, "ratio_vs_plain"));
    }
    pairs
}

/// The latency each proxy adds over direct (for streams, also to the first byte).
fn print_added(mode: Mode, members: &[Member], mode_json: &Value) {
    for member in members {
        if member.target == Target::Direct {
            continue;
        }
        let Some(t) = mode_json.get(member.target.name()) else { continue };
        let f = |key: &str| t[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {} {} adds: p50 {:+.3} ms, p99 {:+.3} ms{}",
            mode.name(),
            member.target.name(),
            f("added_p50_ms"),
            f("added_p99_ms"),
            if mode == Mode::Stream {
                format!("; first byte p50 {:+.3} ms, p99 {:+.3} ms", f("added_ttfb_p50_ms"), f("added_ttfb_p99_ms"))
            } else {
                String::new()
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Paced mode

/// Per target over the paced rounds.
#[derive(Default)]
struct PacedTotals {
    cpu: Duration,
    chunks: u64,
    ok: usize,
    errors: BTreeMap<String, usize>,
    rounds_us_per_chunk: Vec<f64>,
    peak_rss: Option<u64>,
    totals: Vec<Duration>,
    firsts: Vec<Duration>,
}

impl PacedTotals {
    fn us_per_chunk(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.chunks.max(1) as f64
    }
}

/// `paced.streams` streams at once, each `paced.chunks` SSE events `paced.gap` apart (as a
/// model sends them), through each weir and nginx in turn on an upstream of their own; the
/// figure is each target's CPU time over its round per chunk delivered.
async fn run_paced(params: &Params, paced: &Paced) -> Value {
    // The mock model's answers are at most 24 words: a longer stream is one word per chunk,
    // then the finish and usage chunks and `[DONE]`.
    let mut bodies = common::plan_bodies(20);
    bodies.sse_chunks = Arc::new(common::long_stream_chunks(paced.chunks.saturating_sub(3).max(1)).0);
    let chunks = bodies.sse_chunks.len();
    let upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&bodies.sse_chunks),
        first_gap: Duration::ZERO,
        gap: paced.gap,
    })
    .await;
    let members = start_targets(upstream, params, false).await;
    let stream_time = paced.gap * (chunks.max(1) - 1) as u32;
    println!(
        "\n== paced: {} concurrent streams of {chunks} chunks {:.0} ms apart ({:.1} s each), {} rounds ==",
        paced.streams,
        paced.gap.as_secs_f64() * 1000.0,
        stream_time.as_secs_f64(),
        params.rounds
    );
    let spec = |addr| Streams {
        addr,
        count: paced.streams,
        open_per_sec: paced.open_per_sec,
        max_connecting: paced.max_connecting,
        timeout: stream_time + Duration::from_secs(60),
        load: load_for(bodies.request_stream.clone(), bodies.sse_len(), params.profile),
        expected: bodies.sse_bytes(),
    };
    let mut totals: BTreeMap<Target, PacedTotals> = BTreeMap::new();
    let mut sent = BTreeMap::new();
    for r in 0..params.rounds {
        let n = members.len();
        for i in 0..n {
            let member = &members[(i + r) % n];
            let pid = member.weir().map(|w| w.process.pid());
            pid.map(common::reset_peak_rss);
            let before = member.cpu();
            let outcomes = hold_streams(&spec(member.addr)).await;
            // Let the closed connections be torn down inside the measured window.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let cpu = before.zip(member.cpu()).map_or(Duration::ZERO, |(b, a)| a.saturating_sub(b));
            let t = totals.entry(member.target).or_default();
            let delivered = (outcomes.ok * chunks) as u64;
            let us = cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
            eprintln!(
                "  paced round {} {:<10} {}/{} streams whole, CPU {:.2} s = {us:.2} µs/chunk",
                r + 1,
                member.target.name(),
                outcomes.ok,
                paced.streams,
                cpu.as_secs_f64()
            );
            *sent.entry(member.target).or_default() += outcomes.opened;
            t.cpu += cpu;
            t.chunks += delivered;
            t.ok += outcomes.ok;
            t.rounds_us_per_chunk.push(round(us, 3));
            for (kind, count) in outcomes.errors {
                *t.errors.entry(kind).or_default() += count;
            }
            t.peak_rss = t.peak_rss.max(pid.and_then(|p| common::proc_status_bytes(p, "VmHWM")));
            t.totals.extend(outcomes.totals);
            t.firsts.extend(outcomes.firsts);
        }
    }
    let mut out = print_paced(&mut totals, params, paced, chunks);
    out["recorded"] = count_recorded(&members, &sent, "paced").await;
    out
}

/// The paced table: CPU per chunk, errors, stream times and weir's peak RSS per target,
/// then each weir's CPU per chunk ÷ nginx's.
fn print_paced(totals: &mut BTreeMap<Target, PacedTotals>, params: &Params, paced: &Paced, chunks: usize) -> Value {
    println!(
        "{:<10} {:>12} {:>14} {:>8} {:>12} {:>12} {:>12} {:>13}  rounds µs/chunk",
        "target", "µs/chunk", "streams whole", "errors", "stream p50", "first p50", "first p99", "peak RSS MiB"
    );
    let mut targets = json!({});
    for (target, t) in totals.iter_mut() {
        t.totals.sort_unstable();
        t.firsts.sort_unstable();
        let errors: usize = t.errors.values().sum();
        let peak = t.peak_rss.map(common::mib);
        println!(
            "{:<10} {:>12.2} {:>14} {:>8} {:>9.0} ms {:>9.1} ms {:>9.1} ms {:>13}  {}",
            target.name(),
            t.us_per_chunk(),
            format!("{}/{}", t.ok, paced.streams * params.rounds),
            errors,
            ms(percentile(&t.totals, 0.5)),
            ms(percentile(&t.firsts, 0.5)),
            ms(percentile(&t.firsts, 0.99)),
            peak.map_or(String::new(), |m| format!("{m:.1}")),
            t.rounds_us_per_chunk.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join("/"),
        );
        for (kind, n) in &t.errors {
            println!("    {n:>6} x {kind}");
        }
        targets[target.name()] = json!({
            "cpu_us_per_chunk": round(t.us_per_chunk(), 3),
            "rounds_cpu_us_per_chunk": t.rounds_us_per_chunk,
            "streams_whole": t.ok,
            "streams": paced.streams * params.rounds,
            "errors": errors,
            "error_kinds": t.errors,
            "chunks_delivered": t.chunks,
            "stream_p50_ms": round(ms(percentile(&t.totals, 0.5)), 1),
            "first_byte_p50_ms": round(ms(percentile(&t.firsts, 0.5)), 2),
            "first_byte_p99_ms": round(ms(percentile(&t.firsts, 0.99)), 2),
            "peak_rss_mib": peak.map(|m| round(m, 2)),
        });
    }
    let nginx = totals.get(&Target::Nginx).map(PacedTotals::us_per_chunk);
    let mut ratios = json!({});
    for target in [Target::Weir, Target::WeirPlain, Target::WeirB, Target::HyperFloor] {
        if let (Some(t), Some(nginx)) = (totals.get(&target), nginx) {
            let ratio = t.us_per_chunk() / nginx.max(1e-9);
            println!("  paced CPU per chunk {} ÷ nginx: {ratio:.3}", target.name());
            ratios[format!("{}/nginx", target.name())] = json!(round(ratio, 4));
        }
    }
    json!({"streams": paced.streams, "chunks": chunks, "gap_ms": paced.gap.as_secs_f64() * 1000.0,
           "rounds": params.rounds, "targets": targets, "cpu_per_chunk_ratios": ratios})
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let params = Params::from_env();
    common::raise_fd_limit();
    weir::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = runtime.block_on(run(params));
    common::write_results("load.json", &report);
    // Like a failed stream in `scale`, a lost record is a failure, not a slow figure.
    if report["targets"]["counts_all_match"]["pass"] == false {
        eprintln!("records or traces missing (counts MISMATCH above)");
        std::process::exit(1);
    }
}

async fn run(params: Params) -> Value {
    common::install_cleanup();
    let mut report = json!({ "params": params.to_json() });
    if !params.modes.is_empty() {
        run_closed_loop(&params, &mut report).await;
    }
    if let Some(paced) = &params.paced {
        report["paced"] = run_paced(&params, paced).await;
    }
    report["targets"] = check_targets(&report, &params);
    report
}

// ---------------------------------------------------------------------------------------------
// Targets

/// The `== targets ==` block: one line per check, `ok` / `MISSED` / `not measured`.
struct Checks {
    map: serde_json::Map<String, Value>,
}

impl Checks {
    /// A value that must be at least `min`, at most `max`, or below `limit` (`unit` is shown
    /// beside the bound).
    fn at_least(&mut self, name: &str, value: Option<f64>, min: f64, unit: &str) {
        self.add(name, value, &bound(">=", min, unit), |v| v >= min);
    }

    fn at_most(&mut self, name: &str, value: Option<f64>, max: f64, unit: &str) {
        self.add(name, value, &bound("<=", max, unit), |v| v <= max);
    }

    fn below(&mut self, name: &str, value: Option<f64>, limit: f64, unit: &str) {
        self.add(name, value, &bound("<", limit, unit), |v| v < limit);
    }

    fn add(&mut self, name: &str, value: Option<f64>, want: &str, ok: impl Fn(f64) -> bool) {
        let pass = value.map(ok);
        self.map.insert(name.into(), json!({"value": value, "target": want, "pass": pass}));
        println!(
            "  {:<56} {:>10} {:<14} {}",
            name,
            value.map_or("-".into(), |v| if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.3}") }),
            want,
            match pass {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "not measured",
            }
        );
    }
}

/// `>= 0.85`, `< 64 MiB`: a bound as the targets table shows it.
fn bound(op: &str, value: f64, unit: &str) -> String {
    if unit.is_empty() { format!("{op} {value:.2}") } else { format!("{op} {value} {unit}") }
}

/// The issues' targets, checked against this run. Gateway-core lines judge the plain weir
/// (`weir`, or `weir-plain` under the production profile); production lines the `weir`.
fn check_targets(report: &Value, params: &Params) -> Value {
    let get = |path: &str| report.pointer(path).and_then(Value::as_f64);
    let mut checks = Checks { map: serde_json::Map::new() };
    let plain = params.plain_target().name();
    println!("\n== targets ==");
    if !params.modes.is_empty() {
        let at = |phase: &str, mode: &str, target: &str, key: &str| get(&format!("/{phase}/{mode}/{target}/{key}"));
        checks.at_least(
            &format!("chat throughput ratio ({plain}/direct)"),
            at("load", "chat", plain, "ratio_vs_direct"),
            0.60,
            "",
        );
        checks.at_least(
            &format!("stream throughput ratio ({plain}/direct)"),
            at("load", "chat-stream", plain, "ratio_vs_direct"),
            0.50,
            "",
        );
        checks.at_least(
            &format!("chat throughput ratio ({plain}/nginx)"),
            at("load", "chat", plain, "ratio_vs_nginx"),
            0.95,
            "",
        );
        checks.at_least(
            &format!("stream throughput ratio ({plain}/nginx)"),
            at("load", "chat-stream", plain, "ratio_vs_nginx"),
            1.0,
            "",
        );
        checks.below(
            &format!("chat added p99, unloaded, {plain} (ms)"),
            at("latency", "chat", plain, "added_p99_ms"),
            1.0,
            "ms",
        );
        checks.below(
            &format!("stream added p99, unloaded, {plain} (ms)"),
            at("latency", "chat-stream", plain, "added_p99_ms"),
            1.0,
            "ms",
        );
        checks.at_most(
            &format!("stream added first byte p50, unloaded, {plain} (ms)"),
            at("latency", "chat-stream", plain, "added_ttfb_p50_ms"),
            0.2,
            "ms",
        );
        checks.below(
            &format!("{plain} peak RSS under {} connections (MiB)", params.connections),
            get(&format!("/rss/{plain}/peak_under_load_mib")),
            50.0,
            "MiB",
        );
        if params.profile == Profile::Production {
            check_production(&mut checks, report, params);
        }
    }
    if report.get("paced").is_some() {
        check_paced(&mut checks, report, params);
    }
    check_counts(&mut checks, report);
    Value::Object(checks.map)
}

/// Everything on: throughput against the plain weir, added latency, peak RSS.
fn check_production(checks: &mut Checks, report: &Value, params: &Params) {
    let get = |path: &str| report.pointer(path).and_then(Value::as_f64);
    checks.at_least("chat throughput ratio (production/plain)", get("/load/chat/weir/ratio_vs_plain"), 0.85, "");
    checks.at_least(
        "stream throughput ratio (production/plain)",
        get("/load/chat-stream/weir/ratio_vs_plain"),
        0.85,
        "",
    );
    checks.below("chat added p99, unloaded, production (ms)", get("/latency/chat/weir/added_p99_ms"), 1.0, "ms");
    checks.below(
        "stream added p99, unloaded, production (ms)",
        get("/latency/chat-stream/weir/added_p99_ms"),
        1.0,
        "ms",
    );
    checks.below(
        &format!("production peak RSS under {} connections (MiB)", params.connections),
        get("/rss/weir/peak_under_load_mib"),
        64.0,
        "MiB",
    );
}

/// Paced streams: CPU per chunk against nginx, and every stream whole.
fn check_paced(checks: &mut Checks, report: &Value, params: &Params) {
    let get = |path: &str| report.pointer(path).and_then(Value::as_f64);
    let plain = params.plain_target().name();
    checks.at_most(
        &format!("paced CPU per chunk ({plain}/nginx)"),
        get(&format!("/paced/cpu_per_chunk_ratios/{plain}~1nginx")),
        1.10,
        "",
    );
    if params.profile == Profile::Production {
        checks.at_most(
            "paced CPU per chunk (production/nginx)",
            get("/paced/cpu_per_chunk_ratios/weir~1nginx"),
            1.30,
            "",
        );
    }
    let errors = report["paced"]["targets"].as_object().map(|t| t.values().filter_map(|v| v["errors"].as_f64()).sum());
    checks.add("paced streams failed, all targets", errors, "0", |v| v == 0.0);
}

/// Dataset records = requests sent, and traced share = sample ratio, for each production weir
/// (closed loop and paced); then one line that all of them matched.
fn check_counts(checks: &mut Checks, report: &Value) {
    let mut all = None;
    for (part, path) in [("", "/recorded"), ("paced ", "/paced/recorded")] {
        let Some(weirs) = report.pointer(path).and_then(Value::as_object) else { continue };
        for (name, recorded) in weirs {
            let dataset = &recorded["dataset"];
            let traces = &recorded["traces"];
            let dataset_ok = dataset["match"].as_bool().unwrap_or(false);
            let traces_ok = traces["match"].as_bool().unwrap_or(false);
            checks.add(
                &format!("{part}{name} dataset records (= requests sent)"),
                dataset["written"].as_f64(),
                &format!("= {}", dataset["requests_sent"]),
                |_| dataset_ok,
            );
            checks.add(
                &format!("{part}{name} traced share (server spans/requests)"),
                traces["traced_ratio"].as_f64(),
                &format!(
                    "{} ± {:.3}",
                    traces["sample_ratio"].as_f64().unwrap_or(f64::NAN),
                    traces["tolerance"].as_f64().unwrap_or(f64::NAN)
                ),
                |_| traces_ok,
            );
            all = Some(all.unwrap_or(true) && dataset_ok && traces_ok);
        }
    }
    if let Some(all) = all {
        checks.map.insert("counts_all_match".into(), json!({"pass": all}));
    }
}
