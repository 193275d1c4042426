//! Scale benchmark: thousands of concurrent SSE streams held open through weir at once.
//!
//! The bench process hosts the mock upstream (which paces each stream's chunks over a few
//! seconds) and the clients; weir runs as its own process, so its file descriptors and
//! memory are its own. Every stream must arrive whole: any error fails the bench (exit 1).
//! See `benches/README.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops at the first broken setup step; it serves no requests"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use common::loadgen::Load;
use common::streams::{Streams, hold_streams};
use common::{ClientConn, ms, percentile};

struct Params {
    streams: usize,
    stream_duration: Duration,
    chunks: usize,
    open_per_sec: f64,
    max_connecting: usize,
    timeout_margin: Duration,
    long_chunks: usize,
    long_gap: Duration,
}

impl Params {
    fn from_env() -> Params {
        Params {
            streams: common::env_or("WEIR_SCALE_STREAMS", 8000usize).max(1),
            stream_duration: common::env_secs("WEIR_SCALE_STREAM_SECONDS", 5.0),
            chunks: common::env_or("WEIR_SCALE_CHUNKS", 20usize).max(2),
            open_per_sec: common::env_or("WEIR_SCALE_OPEN_PER_SEC", 4000.0f64).max(1.0),
            max_connecting: common::env_or("WEIR_SCALE_MAX_CONNECTING", 256usize).max(1),
            timeout_margin: common::env_secs("WEIR_SCALE_TIMEOUT_MARGIN", 60.0),
            long_chunks: common::env_or("WEIR_SCALE_LONG_CHUNKS", 20_000usize),
            long_gap: Duration::from_secs_f64(common::env_or("WEIR_SCALE_LONG_GAP_MS", 1.0f64).max(0.0) / 1000.0),
        }
    }
}

fn main() {
    let params = Params::from_env();
    let fd_limit = common::raise_fd_limit();
    // Each stream holds a client socket and an upstream socket in this process.
    let needed = 2 * params.streams as u64 + 256;
    if fd_limit < needed {
        eprintln!("warning: NOFILE limit {fd_limit} is below the {needed} descriptors {} streams need", params.streams);
    }
    weir::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let passed = runtime.block_on(async {
        let streams_ok = run(&params, fd_limit).await;
        let long_ok = params.long_chunks == 0 || long_stream(params.long_chunks, params.long_gap).await;
        streams_ok && long_ok
    });
    drop(runtime);
    if !passed {
        std::process::exit(1);
    }
}

async fn run(params: &Params, fd_limit: u64) -> bool {
    common::install_cleanup();
    let bodies = common::plan_bodies(params.chunks);
    let chunk_count = bodies.sse_chunks.len();
    let gap = params.stream_duration.div_f64((chunk_count.max(2) - 1) as f64);
    let upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&bodies.sse_chunks),
        first_gap: Duration::ZERO,
        gap,
    })
    .await;
    let weir = common::start_weir(upstream).await;
    let pid = weir.process.pid();
    println!(
        "weir scale bench: {} streams of {} chunks over {:.1} s each, opened at {:.0}/s \
         (at most {} connecting), bench NOFILE {fd_limit}",
        params.streams,
        chunk_count,
        params.stream_duration.as_secs_f64(),
        params.open_per_sec,
        params.max_connecting,
    );
    let rss_reset = common::reset_peak_rss(pid);

    // Sample weir's RSS and descriptors while the streams run.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let (mut max_rss, mut max_fds) = (0u64, 0usize);
            while sampling.load(Ordering::Relaxed) {
                max_rss = max_rss.max(common::proc_status_bytes(pid, "VmRSS").unwrap_or(0));
                max_fds = max_fds.max(common::fd_count(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (max_rss, max_fds)
        })
    };

    let spec = Streams {
        addr: weir.addr,
        count: params.streams,
        open_per_sec: params.open_per_sec,
        max_connecting: params.max_connecting,
        timeout: params.stream_duration + params.timeout_margin,
        load: Load::chat(bodies.request_stream.clone(), bodies.sse_len()),
        expected: bodies.sse_bytes(),
    };
    let outcomes = hold_streams(&spec).await;
    sampling.store(false, Ordering::Relaxed);
    let (max_rss_sampled, max_fds) = sampler.await.unwrap_or((0, 0));
    let peak_rss = common::proc_status_bytes(pid, "VmHWM");
    let weir_alive = common::proc_status_bytes(pid, "VmRSS").is_some();
    drop(weir);

    let error_count = outcomes.error_count();
    let peak = outcomes.peak_active;
    let (ramp, wall) = (outcomes.ramp, outcomes.wall);
    let peak_mib = peak_rss.map(common::mib);

    println!("\n== {} concurrent streams through weir ==", params.streams);
    println!("  completed whole      {:>8} / {}", outcomes.ok, params.streams);
    println!("  errors               {error_count:>8}");
    for (kind, n) in &outcomes.errors {
        println!("    {n:>6} x {kind}");
    }
    println!("  peak open at once    {peak:>8}   (streams between first and last byte)");
    println!("  connections opened   {:>8}   in {:.2} s", outcomes.opened, ramp.as_secs_f64());
    println!(
        "  stream duration      p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&outcomes.totals, 0.5)),
        ms(percentile(&outcomes.totals, 0.99)),
        ms(outcomes.totals.last().copied().unwrap_or_default())
    );
    println!(
        "  first byte           p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&outcomes.firsts, 0.5)),
        ms(percentile(&outcomes.firsts, 0.99)),
        ms(outcomes.firsts.last().copied().unwrap_or_default())
    );
    println!(
        "  weir peak RSS        {} MiB (VmHWM{}), sampled max {:.1} MiB, max fds {max_fds}",
        peak_mib.map_or("?".into(), |m| format!("{m:.1}")),
        if rss_reset { ", reset after startup" } else { " since start" },
        common::mib(max_rss_sampled)
    );
    println!("  wall time            {:.1} s", wall.as_secs_f64());
    if !weir_alive {
        println!("  weir was no longer running at the end");
    }

    let all_ok = error_count == 0 && outcomes.ok == params.streams && weir_alive;
    let rss_ok = peak_mib.is_some_and(|m| m < 300.0);
    println!("\n== targets ==");
    println!("  {:<40} {}", format!("{} streams, zero errors", params.streams), if all_ok { "ok" } else { "MISSED" });
    println!(
        "  {:<40} {}",
        format!("peak RSS < 300 MiB ({})", peak_mib.map_or("?".into(), |m| format!("{m:.1}"))),
        if rss_ok { "ok" } else { "MISSED" }
    );

    common::write_results(
        "scale.json",
        &json!({
            "params": {
                "streams": params.streams,
                "stream_seconds": params.stream_duration.as_secs_f64(),
                "chunks": chunk_count,
                "open_per_sec": params.open_per_sec,
                "max_connecting": params.max_connecting,
                "bench_nofile": fd_limit,
            },
            "completed": outcomes.ok,
            "errors": error_count,
            "error_kinds": outcomes.errors,
            "peak_concurrent_streams": peak,
            "ramp_s": ramp.as_secs_f64(),
            "wall_s": wall.as_secs_f64(),
            "stream_ms": {
                "p50": ms(percentile(&outcomes.totals, 0.5)),
                "p99": ms(percentile(&outcomes.totals, 0.99)),
            },
            "first_byte_ms": {
                "p50": ms(percentile(&outcomes.firsts, 0.5)),
                "p99": ms(percentile(&outcomes.firsts, 0.99)),
            },
            "weir_peak_rss_mib": peak_mib,
            "weir_peak_rss_reset_after_startup": rss_reset,
            "weir_sampled_max_rss_mib": common::mib(max_rss_sampled),
            "weir_max_fds": max_fds,
            "targets": { "zero_errors": all_ok, "rss_under_300_mib": rss_ok },
        }),
    );
    all_ok
}

// ---------------------------------------------------------------------------------------------
// One long stream

/// How much one long stream raises weir's RSS: a fresh weir per config, warmed by one short
/// stream (through a second model on its own upstream), its peak reset, then one stream of
/// `words` chunks `gap` apart (1 ms: faster than any model; 0 sends them back to back), and
/// the peak minus the RSS before. Measured without a tap that reads the answer back (only
/// the usage is kept) and with a dataset recording it (the answer is folded as it passes),
/// against the answer's text and its SSE bytes.
async fn long_stream(words: usize, gap: Duration) -> bool {
    let (chunks, text_len) = common::long_stream_chunks(words);
    let chunks = Arc::new(chunks);
    let sse_len: usize = chunks.iter().map(bytes::Bytes::len).sum();
    let bodies = common::plan_bodies(20);
    let long_upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&chunks),
        first_gap: Duration::ZERO,
        gap,
    })
    .await;
    let short_upstream = common::start_upstream(common::UpstreamConfig {
        response_json: bodies.response_json.clone(),
        sse_chunks: Arc::clone(&bodies.sse_chunks),
        first_gap: Duration::ZERO,
        gap: Duration::ZERO,
    })
    .await;
    println!(
        "\n== one stream of {} chunks {} apart ({:.2} MiB of text, {:.2} MiB of SSE) ==",
        chunks.len(),
        if gap.is_zero() { "0 ms".to_owned() } else { format!("{:.1} ms", gap.as_secs_f64() * 1000.0) },
        common::mib(text_len as u64),
        common::mib(sse_len as u64)
    );
    let plain = format!(
        "backends:\n  long: {{ kind: openai, base_url: http://{long_upstream}/v1 }}\n  \
         short: {{ kind: openai, base_url: http://{short_upstream}/v1 }}\n\
         models:\n  {model}: {{ targets: [ {{ backend: long, model: {upstream} }} ] }}\n  \
         warm: {{ targets: [ {{ backend: short, model: {upstream} }} ] }}\n\
         auth: {{ mode: none }}\n",
        model = common::PUBLIC_MODEL,
        upstream = common::UPSTREAM_MODEL,
    );
    let configs = [
        ("usage only", false, plain.clone()),
        ("recorded to a dataset", true, format!("{plain}datasets:\n  - {{ name: all, dir: datasets/all }}\n")),
    ];
    let warm_body = {
        let mut request: serde_json::Value = serde_json::from_slice(&bodies.request_stream).expect("bench request");
        request["model"] = json!("warm");
        bytes::Bytes::from(request.to_string())
    };
    let mut results = serde_json::Map::new();
    let mut all_ok = true;
    for (name, recording, config) in configs {
        let weir = common::start_weir_with(&config).await;
        let pid = weir.process.pid();
        let mut conn = ClientConn::connect(weir.addr).await.expect("connect");
        let warm = conn.post(common::CHAT_PATH, warm_body.clone()).await.expect("warm-up stream");
        assert_eq!(warm.bytes, bodies.sse_len(), "the warm-up stream arrives whole");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = common::proc_status_bytes(pid, "VmRSS").unwrap_or(0);
        let reset = common::reset_peak_rss(pid);
        let exchange = conn.post(common::CHAT_PATH, bodies.request_stream.clone()).await;
        let peak = common::proc_status_bytes(pid, "VmHWM").unwrap_or(0);
        let received = exchange.as_ref().map_or(0, |e| e.bytes);
        let whole = received == sse_len;
        let growth = peak.saturating_sub(before);
        let of_text = growth as f64 / text_len as f64;
        // The target (< 2 x its text) is for a stream nobody reads back; a recorded one also
        // holds its answer and writes its record line, so it is reported, not judged.
        let judged = !recording;
        let ok = whole && reset && (!judged || of_text < 2.0);
        all_ok &= ok;
        println!(
            "  {name:<24} RSS +{:.2} MiB = {of_text:.2} x its text ({:.3} x its SSE){}  {}",
            common::mib(growth),
            growth as f64 / sse_len as f64,
            if whole { String::new() } else { format!(", INCOMPLETE ({received} of {sse_len} bytes)") },
            match (ok, judged) {
                (false, _) => "MISSED",
                (true, true) => "ok (< 2 x)",
                (true, false) => "(reported)",
            },
        );
        results.insert(
            name.into(),
            json!({"rss_before_mib": common::mib(before), "rss_peak_mib": common::mib(peak),
                   "growth_mib": common::mib(growth), "growth_of_text": of_text,
                   "growth_of_sse": growth as f64 / sse_len as f64, "whole": whole, "ok": ok}),
        );
    }
    common::write_results(
        "scale-long.json",
        &json!({"chunks": chunks.len(), "gap_ms": gap.as_secs_f64() * 1000.0, "text_bytes": text_len,
                "sse_bytes": sse_len, "configs": results}),
    );
    all_ok
}
