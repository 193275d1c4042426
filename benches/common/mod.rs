//! Shared pieces of the load and scale benchmarks: the mock OpenAI upstream, launching
//! weir (and nginx) as child processes, an HTTP/1.1 client connection, and small helpers.
//!
//! Everything here is for measuring, so the upstream and the client are kept as cheap as
//! possible: bodies are precomputed once, and nothing is parsed on the hot path.

#![allow(dead_code, reason = "each bench uses a different subset")]

pub mod loadgen;
pub mod recorded;
pub mod streams;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Sleep;

/// Public model name clients send to weir; weir sends `UPSTREAM_MODEL` upstream.
pub const PUBLIC_MODEL: &str = "chat-bench";
pub const UPSTREAM_MODEL: &str = "gpt-4o-mini";
pub const CHAT_PATH: &str = "/v1/chat/completions";

// ---------------------------------------------------------------------------------------------
// Environment knobs

/// `name` parsed from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => match text.trim().parse() {
            Ok(value) => value,
            Err(_) => {
                eprintln!("warning: cannot parse {name}={text:?}; using the default");
                default
            }
        },
        _ => default,
    }
}

/// A duration from the environment in (fractional) seconds.
pub fn env_secs(name: &str, default: f64) -> Duration {
    Duration::from_secs_f64(env_or(name, default).max(0.0))
}

/// Raises this process's soft `NOFILE` limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// `target/bench-results/NAME`, honouring `CARGO_TARGET_DIR`.
pub fn results_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-results").join(name)
}

pub fn write_results(name: &str, value: &Value) {
    let path = results_path(name);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, serde_json::to_string_pretty(value).unwrap_or_default()) {
        Ok(()) => println!("results written to {}", path.display()),
        Err(err) => eprintln!("warning: cannot write {}: {err}", path.display()),
    }
}

/// A port that was free a moment ago (the child binds it right after).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

// ---------------------------------------------------------------------------------------------
// Request and response bodies

/// The request the benches send and the upstream's precomputed answers to it.
pub struct Bodies {
    /// `stream: false` request, as clients send it to weir (public model name).
    pub request_json: Bytes,
    /// Same with `stream: true` and `include_usage`.
    pub request_stream: Bytes,
    /// Upstream's non-streaming answer.
    pub response_json: Bytes,
    /// Upstream's SSE events, one `Bytes` per write, `data: [DONE]` last.
    pub sse_chunks: Arc<Vec<Bytes>>,
}

impl Bodies {
    pub fn sse_len(&self) -> usize {
        self.sse_chunks.iter().map(Bytes::len).sum()
    }

    /// The whole stream as a client receives it.
    pub fn sse_bytes(&self) -> Bytes {
        Bytes::from(self.sse_chunks.concat())
    }
}

fn chat_request(prompt: &str, stream: bool) -> Value {
    let mut request = json!({
        "model": PUBLIC_MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant that answers questions about infrastructure."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "bench-user-1",
    });
    if stream {
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
    }
    request
}

/// Builds the bodies with a prompt whose streamed answer has exactly `chunks` SSE writes
/// (role, words, finish, usage, `[DONE]`) when the mock can make one that long.
pub fn plan_bodies(chunks: usize) -> Bodies {
    let mut best: Option<(usize, String)> = None;
    for i in 0..2000 {
        let prompt = format!("Explain, briefly, how a reverse proxy keeps connections warm (variant {i}).");
        let n = sse_chunks_for(&prompt).len();
        let distance = n.abs_diff(chunks);
        if best.as_ref().is_none_or(|(d, _)| distance < *d) {
            best = Some((distance, prompt));
        }
        if distance == 0 {
            break;
        }
    }
    let prompt = best.expect("at least one prompt").1;
    let upstream_json = upstream_view(&chat_request(&prompt, false));
    let answer = weir::backends::mock::Answer::plan(weir::wire::Endpoint::ChatCompletions, &upstream_json)
        .expect("mock plans the bench request");
    Bodies {
        request_json: Bytes::from(chat_request(&prompt, false).to_string()),
        request_stream: Bytes::from(chat_request(&prompt, true).to_string()),
        response_json: Bytes::from(answer.to_json()),
        sse_chunks: Arc::new(sse_chunks_for(&prompt)),
    }
}

/// The request as the upstream sees it: weir replaced the model name.
fn upstream_view(request: &Value) -> Value {
    let mut request = request.clone();
    request["model"] = json!(UPSTREAM_MODEL);
    request
}

/// A long answer as a model streams it: `words` content chunks of one word each, then the
/// finish chunk, the usage chunk and `data: [DONE]`, one write each. Returns the chunks and
/// the answer's text length in bytes.
pub fn long_stream_chunks(words: usize) -> (Vec<Bytes>, usize) {
    let event = |chunk: Value| Bytes::from(format!("data: {chunk}\n\n"));
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": UPSTREAM_MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut chunks = Vec::with_capacity(words + 3);
    let mut text = 0;
    for i in 0..words {
        let word = format!(" word{}", i % 1000);
        text += word.len();
        chunks.push(event(chunk(json!({"content": word}), Value::Null)));
    }
    chunks.push(event(chunk(json!({}), json!("stop"))));
    let usage = json!({"prompt_tokens": 40, "completion_tokens": words, "total_tokens": words + 40});
    chunks.push(event(json!({"id": "chatcmpl-long", "object": "chat.completion.chunk", "created": 1_700_000_000,
                             "model": UPSTREAM_MODEL, "choices": [], "usage": usage})));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    (chunks, text)
}

fn sse_chunks_for(prompt: &str) -> Vec<Bytes> {
    let request = upstream_view(&chat_request(prompt, true));
    weir::backends::mock::Answer::plan(weir::wire::Endpoint::ChatCompletions, &request)
        .expect("mock plans the bench request")
        .to_sse_chunks()
}

// ---------------------------------------------------------------------------------------------
// Mock upstream

#[derive(Clone)]
pub struct UpstreamConfig {
    pub response_json: Bytes,
    pub sse_chunks: Arc<Vec<Bytes>>,
    /// Pause before the first SSE chunk (after the response headers).
    pub first_gap: Duration,
    /// Pause between SSE chunks; zero still sends each chunk as its own write.
    pub gap: Duration,
}

/// Starts the mock OpenAI upstream on `127.0.0.1:0` (backlog 8192, `TCP_NODELAY`,
/// HTTP/1.1 keep-alive) and returns its address. Any POST whose body contains
/// `"stream":true` gets the SSE chunks, anything else the JSON answer.
pub async fn start_upstream(config: UpstreamConfig) -> SocketAddr {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind upstream");
    let listener = socket.listen(8192).expect("listen upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let config = Arc::new(config);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("upstream accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let config = Arc::clone(&config);
            tokio::spawn(async move {
                let service = service_fn(move |request| upstream_answer(Arc::clone(&config), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type UpstreamBody = Either<Full<Bytes>, ChunkBody>;

async fn upstream_answer(
    config: Arc<UpstreamConfig>,
    request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let stream = contains(&body, br#""stream":true"#);
    let mut response = if stream {
        let mut response =
            Response::new(Either::Right(ChunkBody::new(Arc::clone(&config.sse_chunks), config.first_gap, config.gap)));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        response
    } else {
        let mut response = Response::new(Either::Left(Full::new(config.response_json.clone())));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// SSE chunks sent one write at a time: after a pause when one is configured, else after
/// yielding once so hyper flushes each chunk on its own instead of coalescing them.
pub struct ChunkBody {
    chunks: Arc<Vec<Bytes>>,
    next: usize,
    first_gap: Duration,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    yielded: bool,
}

impl ChunkBody {
    fn new(chunks: Arc<Vec<Bytes>>, first_gap: Duration, gap: Duration) -> ChunkBody {
        ChunkBody { chunks, next: 0, first_gap, gap, sleep: None, yielded: false }
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next >= this.chunks.len() {
            return Poll::Ready(None);
        }
        let pause = if this.next == 0 { this.first_gap } else { this.gap };
        if pause.is_zero() {
            if this.next > 0 && !this.yielded {
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        } else {
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        this.yielded = false;
        let chunk = this.chunks[this.next].clone();
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process in its own process group, killed (SIGKILL to the whole group, so nginx's
/// workers go too) and reaped when dropped, so no bench leaves one behind. Children are also
/// registered so [`install_cleanup`] can kill them if the bench itself is interrupted.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
}

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Spawns `command` in a new process group, guarded.
pub fn spawn_guarded(name: &'static str, mut command: Command) -> std::io::Result<ChildGuard> {
    command.process_group(0);
    let child = command.spawn()?;
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());
    Ok(ChildGuard { name, child })
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` when the child has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.child.id();
        kill_group(pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
    }
}

/// SIGKILL to the process group led by `pid` (each guarded child leads its own).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// On SIGINT or SIGTERM, kills every guarded child's process group and exits (130), so an
/// interrupted bench leaves no gateway or nginx behind. Call inside the runtime.
pub fn install_cleanup() {
    tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for pid in pids {
            kill_group(pid);
        }
        eprintln!("interrupted; child processes killed");
        std::process::exit(130);
    });
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resets the kernel's peak-RSS mark (`VmHWM`) of `pid` to its current RSS.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// weir running as a child process.
pub struct Weir {
    pub process: ChildGuard,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Keeps the config file alive.
    _dir: tempfile::TempDir,
}

impl Weir {
    /// The config file it was started with (`weir.yaml` in its own directory).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("weir.yaml")
    }

    /// Its working directory (relative dataset directories land here).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The Prometheus text of its admin `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let mut conn = ClientConn::connect(self.admin_addr).await?;
        let (status, body) = conn.get_body("/metrics").await?;
        if status != StatusCode::OK {
            return Err(format!("/metrics answered {status}").into());
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The sum of metric `name` over the samples whose labels include every `labels` pair
/// (all of them for none), from Prometheus text; 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let has = |(k, v): &(&str, &str)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
            labels.iter().all(has).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Starts the release-built `weir serve` against `upstream` (`auth: none`, one model
/// `PUBLIC_MODEL` → `UPSTREAM_MODEL`) and waits until `/readyz` answers 200.
pub async fn start_weir(upstream: SocketAddr) -> Weir {
    start_weir_with(&plain_config(upstream)).await
}

/// The plain weir as a feature's baseline: `WEIR_BENCH_BASELINE_BIN` (another build, e.g.
/// one without the feature compiled in) when set, else the same binary as the feature.
pub async fn start_baseline_weir(upstream: SocketAddr) -> Weir {
    let binary = std::env::var("WEIR_BENCH_BASELINE_BIN").ok();
    start_weir_bin(&plain_config(upstream), binary).await
}

/// A stand-in for an OTLP/HTTP trace collector: answers every export 200 after decoding it,
/// as a collector would (so tracing costs what it costs against a live one), and counts the
/// spans it received, so a bench can check that every sampled request arrived as a trace.
pub struct OtlpSink {
    pub addr: SocketAddr,
    counts: Arc<SpanCounts>,
}

/// What an [`OtlpSink`] received so far.
#[derive(Debug, Default)]
struct SpanCounts {
    exports: AtomicU64,
    spans: AtomicU64,
    /// `SpanKind::Server` spans: one per traced request (the client spans are its attempts).
    server_spans: AtomicU64,
    /// Exports that were not plain protobuf `ExportTraceServiceRequest`s.
    undecodable: AtomicU64,
}

/// A reading of an [`OtlpSink`]'s counters; subtract two to count one stretch of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanTally {
    pub exports: u64,
    pub spans: u64,
    pub server_spans: u64,
    pub undecodable: u64,
}

impl std::ops::Sub for SpanTally {
    type Output = SpanTally;
    fn sub(self, earlier: SpanTally) -> SpanTally {
        SpanTally {
            exports: self.exports - earlier.exports,
            spans: self.spans - earlier.spans,
            server_spans: self.server_spans - earlier.server_spans,
            undecodable: self.undecodable - earlier.undecodable,
        }
    }
}

impl OtlpSink {
    pub fn tally(&self) -> SpanTally {
        let c = &self.counts;
        SpanTally {
            exports: c.exports.load(Ordering::Relaxed),
            spans: c.spans.load(Ordering::Relaxed),
            server_spans: c.server_spans.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
        }
    }

    /// The tally once exports have stopped coming: weir exports a partial batch at most 1 s
    /// after its last span, so the count is settled when it has not moved for `quiet` (or
    /// when `enough` server spans arrived); gives up after `limit`.
    pub async fn settled(&self, enough: Option<u64>, quiet: Duration, limit: Duration) -> SpanTally {
        let started = Instant::now();
        let mut last = self.tally();
        let mut since = Instant::now();
        loop {
            if enough.is_some_and(|n| last.server_spans >= n) || since.elapsed() >= quiet || started.elapsed() >= limit
            {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.tally();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
}

pub async fn start_otlp_sink() -> OtlpSink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind OTLP sink");
    let addr = listener.local_addr().expect("OTLP sink address");
    let counts = Arc::new(SpanCounts::default());
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let counts = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counts = Arc::clone(&counts);
                    async move {
                        // weir's OTLP/HTTP exporter sends plain protobuf (no compression is
                        // configured); anything else is counted as undecodable.
                        let encoded = request.headers().contains_key(http::header::CONTENT_ENCODING);
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        counts.add_export(&body, encoded);
                        let mut response = Response::new(Full::new(Bytes::new()));
                        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    OtlpSink { addr, counts }
}

impl SpanCounts {
    fn add_export(&self, body: &[u8], encoded: bool) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
        use prost::Message as _;
        self.exports.fetch_add(1, Ordering::Relaxed);
        let decoded = if encoded { None } else { ExportTraceServiceRequest::decode(body).ok() };
        let Some(export) = decoded else {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let spans = export.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
        let (mut all, mut server) = (0, 0);
        for span in spans {
            all += 1;
            server += u64::from(span.kind == SpanKind::Server as i32);
        }
        self.spans.fetch_add(all, Ordering::Relaxed);
        self.server_spans.fetch_add(server, Ordering::Relaxed);
    }
}

/// The config body (everything but `server`) of the plain single-target setup.
pub fn plain_config(upstream: SocketAddr) -> String {
    format!(
        "backends:\n  upstream: {{ kind: openai, base_url: http://{upstream}/v1 }}\n\
         models:\n  {PUBLIC_MODEL}: {{ targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ] }}\n\
         auth: {{ mode: none }}\n"
    )
}

/// The virtual key the benches send (`Authorization: Bearer sk-bench`); configs name it by
/// its hash ([`bench_key_hash`]).
pub const BENCH_KEY: &str = "sk-bench";

/// `sha256:` + hex of [`BENCH_KEY`], as `weir key hash` prints it.
pub fn bench_key_hash() -> String {
    weir::auth::hash_key(BENCH_KEY)
}

/// `Authorization: Bearer sk-bench`.
pub fn bench_key_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let value = HeaderValue::try_from(format!("Bearer {BENCH_KEY}")).expect("a valid header value");
    headers.insert(http::header::AUTHORIZATION, value);
    headers
}

/// The dataset the production profile records every request to (relative: it lands in the
/// weir's own temporary working directory).
pub const PRODUCTION_DATASET: &str = "all";
/// The production profile's trace sampling.
pub const PRODUCTION_SAMPLE_RATIO: f64 = 0.1;

/// The production profile: everything a real deployment turns on, at settings that never
/// refuse a bench request. One virtual key with rate limits and a monthly budget (neither
/// reached), a priced model with its response cache (8 MiB: the cache holds what it is
/// given, so its size is the operator's choice, not weir's overhead), a dataset recording every
/// request with redaction, traces over OTLP/HTTP to `otlp_sink` sampled at 10%, and metrics
/// (always on). Requests need [`bench_key_headers`]; send unique bodies
/// ([`loadgen::Load::unique`]) so the cache misses every time and does its full work.
pub fn production_config(upstream: SocketAddr, otlp_sink: SocketAddr) -> String {
    format!(
        "backends:\n  upstream: {{ kind: openai, base_url: http://{upstream}/v1 }}\n\
         models:\n  {PUBLIC_MODEL}:\n    targets: [ {{ backend: upstream, model: {UPSTREAM_MODEL} }} ]\n\
         \x20   price: {{ input_per_mtok: 0.15, output_per_mtok: 0.60 }}\n    cache: {{ ttl: 10m }}\n\
         keys:\n  - name: bench\n    key: \"{key}\"\n\
         \x20   rate: {{ rpm: 100000000, tpm: 100000000000, concurrent: 100000 }}\n\
         \x20   budget: {{ usd: 1000000000, per: month }}\n\
         auth: {{ mode: keys }}\n\
         cache: {{ max_size: 8MiB }}\n\
         datasets:\n  - {{ name: {PRODUCTION_DATASET}, dir: datasets/{PRODUCTION_DATASET}, redact: [email, phone, key] }}\n\
         telemetry:\n  otlp: {{ endpoint: http://{otlp_sink}, protocol: http }}\n  sample_ratio: {PRODUCTION_SAMPLE_RATIO:?}\n",
        key = bench_key_hash(),
    )
}

/// Starts the release-built `weir serve` with `body` (a config without its `server`
/// section; listen addresses are picked here) and waits until `/readyz` answers 200.
pub async fn start_weir_with(body: &str) -> Weir {
    start_weir_bin(body, None).await
}

/// [`start_weir_with`] running `binary` when given.
pub async fn start_weir_bin(body: &str, binary: Option<String>) -> Weir {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!("server:\n  listen: {addr}\n  admin_listen: {admin_addr}\n{body}");
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config).expect("write weir config");
    // WEIR_BENCH_BIN runs another build of weir (e.g. a feature off) against the same load.
    let binary = binary
        .or_else(|| std::env::var("WEIR_BENCH_BIN").ok())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_weir").to_owned());
    let mut command = Command::new(binary);
    command.arg("serve").arg("--config").arg(&path).current_dir(dir.path());
    command
        .env("RUST_LOG", std::env::var("WEIR_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut process = spawn_guarded("weir", command).expect("spawn weir");
    wait_ready(&mut process, admin_addr, "/readyz").await;
    Weir { process, addr, admin_addr, _dir: dir }
}

/// Polls `GET path` on `addr` until it answers 200; panics if the child exits or after 30 s.
pub async fn wait_ready(process: &mut ChildGuard, addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.exited() {
            panic!("{} exited during startup: {status}", process.name);
        }
        if let Ok(mut conn) = ClientConn::connect(addr).await
            && let Ok(response) = conn.get(path).await
            && response == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "{} not ready on {addr} after 30 s", process.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx as a reverse proxy to `upstream` (HTTP/1.1 upstream keep-alive, no buffering),
/// when `nginx` is installed.
pub struct Nginx {
    pub process: ChildGuard,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

pub async fn start_nginx(upstream: SocketAddr, workers: &str) -> Option<Nginx> {
    let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let d = dir.path().display();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n\
           client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream weir_bench_upstream {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}\n\
           server {{\n    listen {addr} backlog=8192;\n    keepalive_requests 100000000;\n\
             location / {{\n      proxy_pass http://weir_bench_upstream;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_request_buffering off;\n\
             }}\n  }}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut process = spawn_guarded("nginx", command).ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = process.exited() {
            eprintln!("nginx exited at startup ({status}); skipping the nginx reference");
            return None;
        }
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("nginx did not listen within 10 s; skipping the nginx reference");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(Nginx { process, addr, _dir: dir })
}

/// The floor of weir's stack (`examples/hyper_floor.rs`: hyper's HTTP/1 server and client on
/// one single-threaded runtime per core, nothing else), built on first use.
pub struct HyperFloor {
    pub process: ChildGuard,
    pub addr: SocketAddr,
}

/// Builds and starts the hyper floor in front of `upstream`; `None` (saying why) when it
/// cannot be built or does not listen.
pub async fn start_hyper_floor(upstream: SocketAddr) -> Option<HyperFloor> {
    let Some(binary) = build_example("hyper_floor") else {
        eprintln!("the hyper floor could not be built; running without it");
        return None;
    };
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(binary);
    command.arg(addr.to_string()).arg(upstream.to_string());
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    let mut process = spawn_guarded("hyper-floor", command).ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if process.exited().is_some() || Instant::now() > deadline {
            eprintln!("the hyper floor did not listen; running without it");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(HyperFloor { process, addr })
}

/// `cargo build --release --example NAME`; the path of the executable it built.
fn build_example(name: &str) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--message-format=json", "--example", name])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    output.stdout.split(|&b| b == b'\n').rev().find_map(|line| {
        let message: Value = serde_json::from_slice(line).ok()?;
        let executable = message.get("executable")?.as_str()?;
        (message["target"]["name"] == name).then(|| executable.into())
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Client

pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 keep-alive connection (`TCP_NODELAY`).
pub struct ClientConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    /// Added to every request.
    headers: http::HeaderMap,
}

/// What one request measured.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Request sent → last body byte.
    pub total: Duration,
    /// Request sent → first body byte.
    pub first_byte: Duration,
    pub bytes: usize,
}

impl ClientConn {
    pub async fn connect(addr: SocketAddr) -> Result<ClientConn, ClientError> {
        ClientConn::connect_with(addr, http::HeaderMap::new()).await
    }

    /// A connection that sends `headers` with every request.
    pub async fn connect_with(addr: SocketAddr, headers: http::HeaderMap) -> Result<ClientConn, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = HeaderValue::try_from(addr.to_string())?;
        Ok(ClientConn { sender, host, headers })
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().expect("valid path");
        request.headers_mut().insert(HOST, self.host.clone());
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        request
    }

    pub async fn get(&mut self, path: &str) -> Result<StatusCode, ClientError> {
        Ok(self.get_body(path).await?.0)
    }

    /// GETs `path` and returns the status and the whole body.
    pub async fn get_body(&mut self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender.ready().await?;
        let response = self.sender.send_request(self.request(Method::GET, path, Bytes::new())).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs `body` as JSON to `path` and reads the whole answer, timing the first and last
    /// body bytes. A non-200 status is an error.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<Exchange, ClientError> {
        self.post_observed(path, body, || {}).await
    }

    /// [`ClientConn::post`], calling `on_first_byte` when the first body byte arrives.
    pub async fn post_observed(
        &mut self,
        path: &str,
        body: Bytes,
        on_first_byte: impl FnOnce(),
    ) -> Result<Exchange, ClientError> {
        self.post_inspected(path, body, on_first_byte, |_| {}).await
    }

    /// [`ClientConn::post_observed`], also handing each piece of the answer's body to
    /// `on_data` as it arrives (to check its bytes without keeping them).
    pub async fn post_inspected(
        &mut self,
        path: &str,
        body: Bytes,
        on_first_byte: impl FnOnce(),
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Exchange, ClientError> {
        let mut on_first_byte = Some(on_first_byte);
        self.sender.ready().await?;
        let mut request = self.request(Method::POST, path, body);
        request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let sent = Instant::now();
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut first_byte = None;
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                if first_byte.is_none() {
                    first_byte = Some(sent.elapsed());
                    if let Some(f) = on_first_byte.take() {
                        f();
                    }
                }
                bytes += data.len();
                on_data(&data);
            }
        }
        let total = sent.elapsed();
        if status != StatusCode::OK {
            return Err(format!("status {status}").into());
        }
        Ok(Exchange { total, first_byte: first_byte.unwrap_or(total), bytes })
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// `p` in 0..=1 of sorted `samples` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
