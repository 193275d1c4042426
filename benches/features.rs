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
//! Scenarios that record (a dataset, traces) are also checked for what they recorded: every
//! request sent to the feature weir (warm-up included) must be a dataset record, and the
//! server spans the OTLP sink received must match the sampled share of them. A mismatch is
//! printed as `MISMATCH` and makes the bench exit 1 (after writing its results).
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
use common::recorded;
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
    /// The same request through the Responses API (`/v1/responses`), JSON or streamed.
    Responses {
        stream: bool,
    },
    /// The same request through the Anthropic Messages API (`/v1/messages`).
    Messages {
        stream: bool,
    },
}

/// What a scenario's config may refer to.
struct Ctx {
    upstream: SocketAddr,
    /// An OTLP/HTTP collector stand-in that accepts every export and counts its spans.
    otlp_sink: common::OtlpSink,
}

/// What the feature weir must have recorded of the requests sent to it, checked after its
/// rounds: a feature must not look cheap by losing records.
#[derive(Debug, Clone, Copy)]
struct Counts {
    /// Every request is a record of this dataset.
    dataset: Option<&'static str>,
    /// Traces are sampled at this ratio: server spans received ÷ requests must match it.
    sample_ratio: Option<f64>,
}

impl Counts {
    const NONE: Counts = Counts { dataset: None, sample_ratio: None };
    const DATASET: Counts = Counts { dataset: Some("all"), sample_ratio: None };
    const PRODUCTION: Counts =
        Counts { dataset: Some(common::PRODUCTION_DATASET), sample_ratio: Some(common::PRODUCTION_SAMPLE_RATIO) };

    const fn traces(ratio: f64) -> Counts {
        Counts { dataset: None, sample_ratio: Some(ratio) }
    }
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
    /// Reload the feature weir this often during its rounds (config rewritten, then SIGHUP).
    reload_every: Option<Duration>,
    /// Every request body unique in the run (same length, same answer), for both targets:
    /// a response cache then misses every time.
    unique_bodies: bool,
    counts: Counts,
}

impl Scenario {
    /// The ratio the issue asks of it: everything on at least 0.85 of a plain weir, any one
    /// feature within 10% of its weir baseline, a cache hit at least 0.9 of the upstream
    /// itself. Proxying as such (`proxy*`) has none here.
    fn target(&self) -> Option<f64> {
        match (self.baseline, self.name) {
            (Baseline::Weir, name) if name.starts_with("production") => Some(0.85),
            (Baseline::Weir, _) | (Baseline::Direct, "cache-hit") => Some(0.90),
            (Baseline::Direct, _) => None,
        }
    }
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

/// The plain config exporting traces over OTLP/HTTP to the bench's sink, sampled at `ratio`.
fn traced(ctx: &Ctx, ratio: f64) -> String {
    let telemetry = format!(
        "telemetry:\n  otlp: {{ endpoint: http://{}, protocol: http }}\n  sample_ratio: {ratio:?}\n",
        ctx.otlp_sink.addr
    );
    plain_with(ctx, &telemetry)
}

/// One model with the response cache on (10 minutes), in a store of `max_size`.
fn cached(ctx: &Ctx, max_size: &str) -> String {
    format!(
        "backends:\n  upstream: {{ kind: openai, base_url: http://{}/v1 }}\n\
         models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ], cache: {{ ttl: 10m }} }}\n\
         auth: {{ mode: none }}\ncache: {{ max_size: {max_size} }}\n",
        ctx.upstream,
    )
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
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "proxy",
            about: "plain weir vs the upstream itself (what proxying costs at all)",
            baseline: Baseline::Direct,
            shape: Shape::Json,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "proxy-stream",
            about: "plain weir vs the upstream itself, 20-event streams",
            baseline: Baseline::Direct,
            shape: Shape::Stream,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
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
                    common::bench_key_hash(),
                )
            },
            headers: common::bench_key_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "reload",
            about: "plain weir reloaded every 100 ms (two configs alternating) vs one never reloaded",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: true,
            reload_every: Some(Duration::from_millis(100)),
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "observability",
            about: "every request traced (OTLP/HTTP to a local sink) + metrics, vs a plain weir \
                    (WEIR_BENCH_BASELINE_BIN: a build without metrics, for both off)",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| traced(ctx, 1.0),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::traces(1.0),
        },
        Scenario {
            name: "observability-sampled",
            about: "as `observability` with sample_ratio 0.1 (a production setting)",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| traced(ctx, 0.1),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::traces(0.1),
        },
        Scenario {
            name: "observability-stream",
            about: "as `observability`, 20-event streams",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| traced(ctx, 1.0),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::traces(1.0),
        },
        Scenario {
            name: "observability-sampled-stream",
            about: "as `observability-sampled` (10% traced), 20-event streams",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| traced(ctx, 0.1),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::traces(0.1),
        },
        Scenario {
            name: "azure",
            about: "kind: azure (deployment URL, api-version, api-key) vs kind: openai",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                format!(
                    "backends:\n  upstream: {{ kind: azure, base_url: http://{}, api_key: k, api_version: 2024-10-21 }}\n\
                     models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ] }}\n\
                     auth: {{ mode: none }}\n",
                    ctx.upstream,
                )
            },
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "params",
            about: "a target with params defaults spliced into every request vs none",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                format!(
                    "backends:\n  upstream: {{ kind: openai, base_url: http://{}/v1 }}\n\
                     models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL}, \
                     params: {{ max_tokens: 256, top_p: 0.9 }} }} ] }}\n\
                     auth: {{ mode: none }}\n",
                    ctx.upstream,
                )
            },
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "prompt",
            about: "a target that fixes a prompt version: a system message rendered (variables, a \
                    conditional, a loop) and spliced before each request's messages vs none",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: prompt_config,
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "split3",
            about: "3-target weighted split (60/30/10, three backends, retry and a fallback configured) vs one target",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| split3_config(ctx, "none"),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "split3-sticky",
            about: "split3 with `sticky: header:x-user` (rendezvous hash per request) vs one target",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| split3_config(ctx, "header:x-user"),
            headers: || {
                let mut headers = HeaderMap::new();
                headers.insert("x-user", HeaderValue::from_static("user-1234"));
                headers
            },
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "cache-hit",
            about: "the same request repeated with `cache` on (all hits after the first) vs the upstream itself",
            baseline: Baseline::Direct,
            shape: Shape::Json,
            config: |ctx| cached(ctx, "64MiB"),
            headers: no_headers,
            // A JSON hit is the upstream's answer byte for byte.
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "cache-miss",
            about: "`cache` on, every request a miss (unique bodies): the key, the lookup, the single-flight \
                    and the insert of every answer into a full 8 MiB cache, vs a plain weir",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| cached(ctx, "8MiB"),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: true,
            counts: Counts::NONE,
        },
        Scenario {
            name: "limits",
            about: "the key with rpm/tpm/concurrent (never reached; memory store) vs auth: none",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| {
                format!(
                    "backends:\n  upstream: {{ kind: openai, base_url: http://{}/v1 }}\n\
                     models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ] }}\n\
                     keys:\n  - {{ name: bench, key: \"{}\", rate: {{ rpm: 100000000, tpm: 100000000000, concurrent: 100000 }} }}\n\
                     auth: {{ mode: keys }}\n",
                    ctx.upstream,
                    common::bench_key_hash(),
                )
            },
            headers: common::bench_key_headers,
            // The rate headers are added, the body is the upstream's.
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
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
            reload_every: None,
            unique_bodies: false,
            counts: Counts::DATASET,
        },
        Scenario {
            name: "dataset-stream",
            about: "a dataset sink recording every request (20-event streams, stored assembled) vs none",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| plain_with(ctx, "datasets:\n  - { name: all, dir: datasets/all }\n"),
            headers: no_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::DATASET,
        },
        Scenario {
            name: "production",
            about: "everything on (common::production_config: key with limits and budget, priced model, \
                    cache missed by unique bodies, dataset with redaction, 10% traced, metrics) vs a plain weir",
            baseline: Baseline::Weir,
            shape: Shape::Json,
            config: |ctx| common::production_config(ctx.upstream, ctx.otlp_sink.addr),
            headers: common::bench_key_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: true,
            counts: Counts::PRODUCTION,
        },
        Scenario {
            name: "production-stream",
            about: "as `production`, 20-event streams",
            baseline: Baseline::Weir,
            shape: Shape::Stream,
            config: |ctx| common::production_config(ctx.upstream, ctx.otlp_sink.addr),
            headers: common::bench_key_headers,
            byte_exact: true,
            reload_every: None,
            unique_bodies: true,
            counts: Counts::PRODUCTION,
        },
        Scenario {
            name: "responses",
            about: "the same request through /v1/responses (translated both ways) vs chat",
            baseline: Baseline::Weir,
            shape: Shape::Responses { stream: false },
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: false,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "responses-stream",
            about: "20-event streams through /v1/responses (typed events) vs chat streams",
            baseline: Baseline::Weir,
            shape: Shape::Responses { stream: true },
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: false,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "messages",
            about: "the same request through /v1/messages (translated both ways) vs chat",
            baseline: Baseline::Weir,
            shape: Shape::Messages { stream: false },
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: false,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
        Scenario {
            name: "messages-stream",
            about: "20-event streams through /v1/messages (Anthropic events) vs chat streams",
            baseline: Baseline::Weir,
            shape: Shape::Messages { stream: true },
            config: |ctx| plain_with(ctx, ""),
            headers: no_headers,
            byte_exact: false,
            reload_every: None,
            unique_bodies: false,
            counts: Counts::NONE,
        },
    ]
}

/// The bench's chat request as a Responses or Messages request (system → instructions or
/// `system`, `max_tokens` → `max_output_tokens`, `user` → `user` or `metadata.user_id`).
fn inbound_body(chat: &[u8], shape: Shape) -> (&'static str, bytes::Bytes) {
    let chat: Value = serde_json::from_slice(chat).expect("the bench request is JSON");
    let messages = chat["messages"].as_array().cloned().unwrap_or_default();
    let system: Vec<Value> = messages.iter().filter(|m| m["role"] == "system").map(|m| m["content"].clone()).collect();
    let turns: Vec<Value> = messages.into_iter().filter(|m| m["role"] != "system").collect();
    let (path, body) = match shape {
        Shape::Responses { stream } => (
            "/v1/responses",
            json!({"model": chat["model"], "instructions": system.first(), "input": turns,
                "max_output_tokens": chat["max_tokens"], "user": chat["user"], "stream": stream, "store": false}),
        ),
        Shape::Messages { stream } => (
            "/v1/messages",
            json!({"model": chat["model"], "system": system.first(), "messages": turns,
                "max_tokens": chat["max_tokens"], "metadata": {"user_id": chat["user"]}, "stream": stream}),
        ),
        Shape::Json | Shape::Stream => (common::CHAT_PATH, chat.clone()),
    };
    (path, serde_json::to_vec(&body).expect("serialises").into())
}

/// CPU time of the inbound translations per request, in µs, measured in-process: the request
/// translated to chat and the answer converted back (JSON, and the 20-event stream).
fn translation_overhead(bodies: &common::Bodies) -> Value {
    use weir::apis::convert::{Converter, Target};
    use weir::apis::responses::Shell;
    const RUNS: u32 = 2000;
    let time = |f: &dyn Fn()| {
        let started = std::time::Instant::now();
        for _ in 0..RUNS {
            f();
        }
        started.elapsed().as_secs_f64() * 1e6 / f64::from(RUNS)
    };
    let stream: Vec<u8> = bodies.sse_chunks.iter().flat_map(|c| c.to_vec()).collect();
    let mut figures = serde_json::Map::new();
    for (name, shape) in
        [("responses", Shape::Responses { stream: false }), ("messages", Shape::Messages { stream: false })]
    {
        let (_, request) = inbound_body(&bodies.request_json, shape);
        let target = || match shape {
            Shape::Responses { .. } => Target::Responses {
                shell: Shell { id: "resp_1".into(), created_at: 0, model: "m".into(), echo: serde_json::Map::new() },
                now: 0,
            },
            _ => Target::Messages { id: "msg_1".into(), model: "m".into(), input_estimate: 0 },
        };
        let translate = || {
            let map = serde_json::from_slice::<serde_json::Map<String, Value>>(&request).unwrap();
            let chat = match shape {
                Shape::Responses { .. } => weir::apis::responses::translate(map, &[]).unwrap().chat,
                _ => weir::apis::messages::translate(map).unwrap().chat,
            };
            std::hint::black_box(serde_json::to_vec(&chat).unwrap());
        };
        let convert = |sse: bool, upstream: &[u8]| {
            let mut converter = Converter::new(target(), 200, sse);
            let mut out = Vec::new();
            converter.push(upstream, &mut out).unwrap();
            converter.finish(&mut out).unwrap();
            std::hint::black_box(out);
        };
        let request_us = time(&translate);
        let json_us = time(&|| convert(false, &bodies.response_json));
        let stream_us = time(&|| convert(true, &stream));
        eprintln!(
            "translation {name}: request {request_us:.1} µs, JSON answer {json_us:.1} µs, 20-event stream {stream_us:.1} µs"
        );
        figures
            .insert(name.into(), json!({"request_us": request_us, "json_answer_us": json_us, "stream_us": stream_us}));
    }
    Value::Object(figures)
}

/// One model whose target fixes `bench@v1`: every request gets its system message rendered.
fn prompt_config(ctx: &Ctx) -> String {
    let prompts = r#"prompts:
  bench:
    versions:
      v1:
        messages:
          - role: system
            content: "You are the {{ product }} assistant.{% if formal %} Be formal.{% endif %}{% for rule in rules %} {{ loop.index }}. {{ rule }}{% endfor %}"
        variables: { product: { default: weir }, formal: { default: true }, rules: { default: [Be brief, Cite the docs] } }
"#;
    format!(
        "backends:\n  upstream: {{ kind: openai, base_url: http://{}/v1 }}\n\
         models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL}, prompt: bench@v1 }} ] }}\n\
         auth: {{ mode: none }}\n{prompts}",
        ctx.upstream,
    )
}

/// Rewrites the feature weir's config every `every`, alternating `config` with a variant
/// that adds a model, and sends SIGHUP after each write, until `stop` turns true.
async fn reload_while(weir: &common::Weir, config: String, every: Duration, stop: tokio::sync::watch::Receiver<bool>) {
    let path = weir.config_path();
    let server = std::fs::read_to_string(&path).expect("read config");
    let server = server.split("backends:").next().expect("server section").to_owned();
    let variant =
        config.replacen("models:\n", "models:\n  reload-extra: { targets: [ { backend: upstream, model: x } ] }\n", 1);
    assert_ne!(variant, config, "the reload scenario's config has a `models:` section");
    let pid = weir.process.pid().to_string();
    let mut turn = 0usize;
    while !*stop.borrow() {
        let body = if turn % 2 == 0 { &variant } else { &config };
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, format!("{server}{body}")).expect("write config");
        std::fs::rename(&tmp, &path).expect("replace config");
        let hup = tokio::process::Command::new("kill").args(["-HUP", &pid]).status().await;
        assert!(hup.is_ok_and(|s| s.success()), "kill -HUP failed");
        turn += 1;
        tokio::time::sleep(every).await;
    }
    eprintln!("   {turn} reloads sent");
}

/// Three backends on the bench upstream (separate pools), split 60/30/10 by variant.
fn split3_config(ctx: &Ctx, sticky: &str) -> String {
    let upstream = ctx.upstream;
    format!(
        "backends:\n\
         \x20 u1: {{ kind: openai, base_url: http://{upstream}/v1 }}\n\
         \x20 u2: {{ kind: openai, base_url: http://{upstream}/v1 }}\n\
         \x20 u3: {{ kind: openai, base_url: http://{upstream}/v1 }}\n\
         models:\n\
         \x20 {PUBLIC_MODEL}:\n\
         \x20   sticky: \"{sticky}\"\n\
         \x20   targets:\n\
         \x20     - {{ backend: u1, model: {UPSTREAM_MODEL}, weight: 60, variant: a }}\n\
         \x20     - {{ backend: u2, model: {UPSTREAM_MODEL}, weight: 30, variant: b }}\n\
         \x20     - {{ backend: u3, model: {UPSTREAM_MODEL}, weight: 10, variant: c }}\n\
         \x20   fallbacks: [ {{ backend: u1, model: {UPSTREAM_MODEL} }} ]\n\
         \x20   retry: {{ attempts: 2, on: [500, 502, 503, connect] }}\n\
         auth: {{ mode: none }}\n"
    )
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
    common::write_results("features.json", &report);
    // Like a failed stream in `scale`, a lost record is a failure, not a slow figure.
    let lost = report["scenarios"].as_array().is_some_and(|all| all.iter().any(|s| s["counts_match"] == false));
    if lost {
        eprintln!("records or traces missing (counts MISMATCH above)");
        std::process::exit(1);
    }
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
    let translation = selected.iter().any(|s| !matches!(s.shape, Shape::Json | Shape::Stream));
    let overhead = translation.then(|| translation_overhead(&bodies));
    for scenario in &selected {
        results.push(run_scenario(scenario, &ctx, &bodies, &params).await);
    }
    print_summary(&results);
    json!({
        "connections": params.connections,
        "duration_s": params.duration.as_secs_f64(),
        "rounds": params.rounds,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "scenarios": results,
        "translation_us": overhead,
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
        Shape::Json | Shape::Responses { stream: false } | Shape::Messages { stream: false } => {
            (bodies.request_json.clone(), bodies.response_json.len())
        }
        Shape::Stream | Shape::Responses { stream: true } | Shape::Messages { stream: true } => {
            (bodies.request_stream.clone(), bodies.sse_len())
        }
    };
    let mut baseline_load = Load::chat(body.clone(), exact_len);
    // The inbound APIs are measured against chat in the same run: same upstream, same answer.
    let (path, body) = match scenario.shape {
        Shape::Json | Shape::Stream => (common::CHAT_PATH, body),
        inbound => inbound_body(&body, inbound),
    };
    let mut feature_load = Load {
        path,
        body,
        expect: if scenario.byte_exact { Expect::Bytes(exact_len) } else { Expect::Ok },
        headers: (scenario.headers)(),
        unique: None,
    };
    if scenario.unique_bodies {
        // Both targets, so the load generator does the same work for each.
        baseline_load = baseline_load.unique();
        feature_load = feature_load.unique();
    }
    let spans_before = ctx.otlp_sink.tally();

    run_round(baseline_addr, &baseline_load, params.connections, params.warmup).await;
    let warm_sent = run_round(feature.addr, &feature_load, params.connections, params.warmup).await.sent;

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
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let reloads = async {
                    if let Some(every) = scenario.reload_every {
                        reload_while(&feature, (scenario.config)(ctx), every, stopped).await;
                    }
                };
                let load = async {
                    let s = run_round(feature.addr, &feature_load, params.connections, params.duration).await;
                    let _ = stop.send(true);
                    s
                };
                let (s, ()) = tokio::join!(load, reloads);
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
    let (recorded, counts_match) =
        check_recorded(scenario.counts, &feature, &ctx.otlp_sink, spans_before, warm_sent + feat.sent).await;
    let target = scenario.target();
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
        "target_ratio": target,
        "target_met": target.map(|t| ratio >= t),
        "recorded": recorded,
        "counts_match": counts_match,
    })
}

/// Counts what the feature weir recorded of the `sent` requests (its warm-up included), as
/// `counts` asks, and prints it. Returns the counts as JSON and whether all of them matched
/// (`None` when nothing is recorded).
async fn check_recorded(
    counts: Counts,
    weir: &common::Weir,
    sink: &common::OtlpSink,
    spans_before: common::SpanTally,
    sent: u64,
) -> (Value, Option<bool>) {
    let mut out = json!({});
    let mut all = None;
    if let Some(dataset) = counts.dataset {
        let count = recorded::count_dataset(weir, dataset, sent).await;
        eprintln!("   {}", count.line());
        out["dataset"] = count.to_json();
        all = Some(all.unwrap_or(true) && count.matches());
    }
    if let Some(ratio) = counts.sample_ratio {
        let count = recorded::count_traces(sink, spans_before, sent, ratio).await;
        eprintln!("   {}", count.line());
        out["traces"] = count.to_json();
        all = Some(all.unwrap_or(true) && count.matches());
    }
    (out, all)
}

/// One line per scenario: the rates, the ratio against its target, and whether what it
/// recorded matched the requests.
fn print_summary(results: &[Value]) {
    eprintln!();
    eprintln!(
        "{:<28} {:>11} {:>11} {:>7}  {:<14} {:<9} about",
        "scenario", "baseline/s", "feature/s", "ratio", "target", "counts"
    );
    for r in results {
        let target = match (r["target_ratio"].as_f64(), r["target_met"].as_bool()) {
            (Some(t), Some(met)) => format!(">= {t:.2} {}", if met { "ok" } else { "MISSED" }),
            _ => String::new(),
        };
        let counts = match r["counts_match"].as_bool() {
            Some(true) => "ok",
            Some(false) => "MISMATCH",
            None => "",
        };
        eprintln!(
            "{:<28} {:>11.0} {:>11.0} {:>7.3}  {:<14} {:<9} {}",
            r["scenario"].as_str().unwrap_or(""),
            r["baseline_rps"].as_f64().unwrap_or(0.0),
            r["feature_rps"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            target,
            counts,
            r["about"].as_str().unwrap_or(""),
        );
    }
}

fn report_round(scenario: &str, r: usize, target: &str, s: &Samples) {
    eprintln!("   {scenario:<14} round {} {target:<9} {:>9.0} req/s  errors {}", r + 1, s.rps(), s.errors);
}
