//! Nothing lost: every way an answer can arrive is seen exactly once by every tap.
//!
//! One gateway with the cache, a limited and budgeted key, a dataset and traces (every
//! request sampled, exported to an in-process OTLP receiver) in front of every kind of
//! upstream: the built-in mock, plain HTTP, HTTPS with `Content-Length`, HTTPS chunked,
//! HTTPS over HTTP/2, and a translated provider (Anthropic). For each, a JSON and a
//! streamed answer, then the same again from the cache; then the ways an answer ends badly
//! (client gone before and after the last byte, upstream cut, timeouts) and coalesced
//! followers. The books must balance: requests sent = `weir_requests_total` = dataset
//! records = server spans, and the key's usage = the dataset records' usage =
//! `weir_tokens_total`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use weir::Gateway;

use crate::support::upstream::{End, TlsMode};
use crate::support::{self, Behavior, MockUpstream, TEAM_KEY};
use crate::telemetry::otlp::Receiver;

const ADMIN_TOKEN: &str = "ledger-admin";

struct Ledger {
    gateway: Gateway,
    receiver: Receiver,
    dir: tempfile::TempDir,
    plain: MockUpstream,
    claude: MockUpstream,
    /// Requests sent so far (each answered with a response or ended by the client).
    sent: usize,
}

/// Every upstream kind, started.
struct Upstreams {
    plain: MockUpstream,
    length: MockUpstream,
    chunked: MockUpstream,
    h2: MockUpstream,
    claude: MockUpstream,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            plain: MockUpstream::start(Behavior::mock()).await,
            length: MockUpstream::start_tls(Behavior::mock(), TlsMode::Length).await,
            chunked: MockUpstream::start_tls(Behavior::mock(), TlsMode::Chunked).await,
            h2: MockUpstream::start_tls(Behavior::mock(), TlsMode::Http2).await,
            claude: MockUpstream::start(Behavior::mock()).await,
        }
    }
}

fn backend(name: &str, upstream: &MockUpstream) -> String {
    let ca = upstream.ca_file().map(|p| format!(", ca_file: \"{}\"", p.display())).unwrap_or_default();
    format!(
        "  {name}: {{ kind: openai, base_url: {}, api_key: sk-up{ca}, timeouts: {{ connect: 2s, first_byte: 2s, total: 20s, idle: 1s }} }}\n",
        upstream.url()
    )
}

fn model(name: &str, backend: &str) -> String {
    format!(
        "  {name}: {{ targets: [ {{ backend: {backend}, model: up-{name} }} ], cache: {{ ttl: 10m }}, price: {{ input_per_mtok: 1.0, output_per_mtok: 2.0 }} }}\n"
    )
}

impl Ledger {
    async fn start() -> Ledger {
        let up = Upstreams::start().await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let claude_root = up.claude.url().trim_end_matches("/v1").to_owned();
        let mut yaml = format!(
            "server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: {ADMIN_TOKEN}, shutdown_timeout: 5s }}\nbackends:\n  mock: {{ kind: mock }}\n  claude: {{ kind: anthropic, base_url: {claude_root}, api_key: sk-ant, timeouts: {{ connect: 2s, first_byte: 2s, total: 20s, idle: 1s }} }}\n"
        );
        for (name, upstream) in [("plain", &up.plain), ("length", &up.length), ("chunked", &up.chunked), ("h2", &up.h2)]
        {
            yaml.push_str(&backend(name, upstream));
        }
        yaml.push_str("models:\n");
        for name in ["mock", "plain", "length", "chunked", "h2", "claude"] {
            yaml.push_str(&model(name, name));
        }
        yaml.push_str(&format!(
            "keys:\n  - {{ name: team, key: {}, rate: {{ rpm: 1000000, tpm: 1000000000 }}, budget: {{ usd: 1000, per: month }} }}\nauth: {{ mode: keys }}\ntelemetry: {{ otlp: {{ endpoint: {}, protocol: http }}, sample_ratio: 1.0 }}\ndatasets:\n  - {{ name: all, dir: \"{}\" }}\n",
            weir::auth::hash_key(TEAM_KEY),
            receiver.url(),
            dir.path().display()
        ));
        let gateway = support::start(&yaml).await;
        Ledger { gateway, receiver, dir, plain: up.plain, claude: up.claude, sent: 0 }
    }

    fn request(&mut self, model: &str, content: &str, stream: bool) -> reqwest::RequestBuilder {
        self.sent += 1;
        let body = json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream});
        support::http()
            .post(format!("{}/chat/completions", support::base_url(&self.gateway)))
            .bearer_auth(TEAM_KEY)
            .json(&body)
    }

    /// Sends one request and reads its whole answer: (status, request id, cache, body).
    async fn send(&mut self, model: &str, content: &str, stream: bool) -> (u16, String, String, String) {
        let response = self.request(model, content, stream).send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let id = header(&response, "x-request-id");
        let cache = header(&response, "x-weir-cache");
        let body = response.text().await.expect("whole body");
        (status, id, cache, body)
    }

    async fn admin(&self, path: &str) -> String {
        support::http()
            .get(format!("http://{}{path}", self.gateway.admin_addr()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("admin body")
    }

    /// The dataset's request records, once there are at least `n` (bounded wait).
    async fn records(&self, n: usize) -> Vec<Value> {
        let mut found = Vec::new();
        let dir = self.dir.path().to_owned();
        support::eventually(Duration::from_secs(15), || {
            found = dataset_records(&dir);
            found.len() >= n
        })
        .await;
        found
    }

    async fn server_spans(&self, n: usize) -> usize {
        let mut count = 0;
        support::eventually(Duration::from_secs(15), || {
            count = self.receiver.spans().iter().filter(|s| s.kind == SpanKind::Server as i32).count();
            count >= n
        })
        .await;
        count
    }
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

fn dataset_records(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.ends_with('}')) {
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                if value.get("type").is_none() {
                    records.push(value);
                }
            }
        }
    }
    records
}

fn record<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records.iter().find(|r| r["request_id"] == id).unwrap_or_else(|| panic!("no dataset record for {id}"))
}

/// Sum of every series of `name` in a Prometheus text, optionally only those whose labels
/// contain `with`.
fn metric_sum(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique(label: &str) -> String {
    format!("{label} question number {}", UNIQUE.fetch_add(1, Ordering::SeqCst))
}

/// The upstream kind, answered and then served from the cache, JSON and streamed: each
/// answer is recorded completed with its body and usage, and stored.
async fn answered_twice(ledger: &mut Ledger, model: &str) {
    for stream in [false, true] {
        if model == "claude" {
            let body = if stream { fixture("stream_text.sse") } else { fixture("message_text.json") };
            ledger.claude.queue(if stream {
                Behavior::Chunks(vec![Bytes::from(body)])
            } else {
                Behavior::reply(200, String::from_utf8(body).expect("UTF-8 fixture"))
            });
        }
        let content = unique(model);
        let (status, first, cache, body) = ledger.send(model, &content, stream).await;
        assert_eq!((status, cache.as_str()), (200, "miss"), "{model} stream={stream}: {body}");
        if stream {
            assert!(body.ends_with("data: [DONE]\n\n"), "{model}: {body}");
        }
        let (status, second, cache, _) = ledger.send(model, &content, stream).await;
        assert_eq!((status, cache.as_str()), (200, "hit"), "{model} stream={stream}: the answer was stored");
        let records = ledger.records(ledger.sent).await;
        let answered = record(&records, &first);
        assert_eq!(answered["outcome"], "completed", "{model} stream={stream}: {answered}");
        assert_eq!(answered["status"], 200);
        assert!(answered["response"]["choices"].is_array(), "{model} stream={stream}: the answer is recorded");
        assert!(answered["usage"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0), "{model}: usage {answered}");
        let hit = record(&records, &second);
        assert_eq!((hit["cache"].as_str(), hit["outcome"].as_str()), (Some("hit"), Some("completed")));
        assert!(hit["response"]["choices"].is_array());
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/anthropic").join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Reads a stream until `[DONE]` has arrived (or `events` data events), then hangs up.
async fn read_then_leave(response: reqwest::Response, events: Option<usize>) {
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        let data_events = seen.matches("data: ").count();
        if seen.contains("data: [DONE]") || events.is_some_and(|n| data_events >= n) {
            return;
        }
    }
}

async fn the_books_balance(ledger: &Ledger) {
    let records = ledger.records(ledger.sent).await;
    assert_eq!(records.len(), ledger.sent, "one dataset record per request");
    let mut ids: Vec<&str> = records.iter().filter_map(|r| r["request_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ledger.sent, "no request recorded twice");
    assert_eq!(ledger.server_spans(ledger.sent).await, ledger.sent, "one server span per request");
    let metrics = ledger.admin("/metrics").await;
    assert_eq!(metric_sum(&metrics, "weir_requests_total", "") as usize, ledger.sent, "weir_requests_total");

    let usage: Value = serde_json::from_str(&ledger.admin("/admin/keys/team/usage").await).expect("usage JSON");
    let totals = &usage["totals"];
    assert_eq!(totals["requests"].as_u64(), Some(ledger.sent as u64), "{usage}");
    let sum = |field: &str| records.iter().filter_map(|r| r["usage"][field].as_u64()).sum::<u64>();
    let (prompt, completion) = (sum("prompt_tokens"), sum("completion_tokens"));
    assert!(prompt > 0 && completion > 0);
    assert_eq!(totals["prompt_tokens"].as_u64(), Some(prompt), "key usage = dataset usage");
    assert_eq!(totals["completion_tokens"].as_u64(), Some(completion));
    assert_eq!(metric_sum(&metrics, "weir_tokens_total", "kind=\"input\"") as u64, prompt, "weir_tokens_total");
    assert_eq!(metric_sum(&metrics, "weir_tokens_total", "kind=\"output\"") as u64, completion);
}

#[tokio::test]
async fn every_way_an_answer_arrives_is_seen_once_by_every_tap() {
    let mut ledger = Ledger::start().await;
    for model in ["mock", "plain", "length", "chunked", "h2", "claude"] {
        answered_twice(&mut ledger, model).await;
    }

    // A client that hangs up right after `[DONE]`: completed.
    ledger.plain.set(Behavior::paced(Duration::from_millis(5)));
    let response = ledger.request("plain", &unique("after"), true).send().await.expect("answers");
    let after = header(&response, "x-request-id");
    read_then_leave(response, None).await;
    // A client that leaves mid-stream: client_gone.
    ledger.plain.set(Behavior::paced(Duration::from_millis(200)));
    let response = ledger.request("plain", &unique("before"), true).send().await.expect("answers");
    let before = header(&response, "x-request-id");
    read_then_leave(response, Some(2)).await;
    // The upstream cuts a stream: failed, with one error event and no [DONE].
    ledger.plain.set(Behavior::stream_then(3, End::Cut));
    let (status, cut, _, body) = ledger.send("plain", &unique("cut"), true).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"error\"") && !body.contains("[DONE]"), "{body}");
    // A stream that stalls past the idle timeout: failed.
    ledger.plain.set(Behavior::stream_then(2, End::Hang));
    let (_, stalled, _, body) = ledger.send("plain", &unique("stall"), true).await;
    assert!(body.contains("upstream_timeout"), "{body}");
    // No answer before first_byte: a 504, recorded.
    ledger.plain.set(Behavior::Hang);
    let (status, hung, _, _) = ledger.send("plain", &unique("hang"), false).await;
    assert_eq!(status, 504);
    // Identical streams at once: one upstream call, every follower recorded.
    ledger.plain.set(Behavior::paced(Duration::from_millis(20)));
    let before_calls = ledger.plain.requests().len();
    let content = unique("coalesced");
    let requests: Vec<_> = (0..3).map(|_| ledger.request("plain", &content, true).send()).collect();
    let responses = futures_util::future::join_all(requests).await;
    let mut followers = Vec::new();
    for response in responses {
        let response = response.expect("answers");
        followers.push(header(&response, "x-request-id"));
        assert!(response.text().await.expect("body").ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(ledger.plain.requests().len(), before_calls + 1, "followers share the leader's call");

    let records = ledger.records(ledger.sent).await;
    assert_eq!(record(&records, &after)["outcome"], "completed", "hung up after the last byte");
    assert_eq!(record(&records, &before)["outcome"], "client_gone");
    assert_eq!(record(&records, &cut)["outcome"], "failed");
    assert_eq!(record(&records, &stalled)["outcome"], "failed");
    assert_eq!(record(&records, &hung)["status"], 504);
    for id in &followers {
        assert_eq!(record(&records, id)["outcome"], "completed");
    }
    the_books_balance(&ledger).await;
    ledger.gateway.shutdown().await;
}

/// 2,000 mixed requests, some cut, some abandoned: the books still balance.
#[tokio::test]
async fn two_thousand_mixed_requests_balance_the_books() {
    let mut ledger = Ledger::start().await;
    ledger.plain.set(Behavior::mock());
    let mut cuts = 0;
    let mut abandoned = 0;
    for batch in 0..100 {
        let mut pending = Vec::new();
        for i in 0..20 {
            let n = batch * 20 + i;
            let model = if n % 2 == 0 { "mock" } else { "plain" };
            // Every fifth request repeats an earlier one: a cache hit.
            let content = if n % 5 == 0 { "a repeated question".to_owned() } else { unique("mixed") };
            let stream = n % 3 != 0;
            if n % 97 == 1 {
                ledger.plain.queue(Behavior::stream_then(2, End::Cut));
                cuts += 1;
            }
            let leave = stream && n % 89 == 0;
            abandoned += usize::from(leave);
            let request = ledger.request(model, &content, stream);
            pending.push(async move {
                let response = request.send().await.expect("gateway answers");
                let status = response.status().as_u16();
                if leave {
                    read_then_leave(response, Some(1)).await;
                } else {
                    let _ = response.bytes().await;
                }
                status
            });
        }
        for status in futures_util::future::join_all(pending).await {
            assert_eq!(status, 200);
        }
    }
    assert!(cuts > 0 && abandoned > 0);
    assert_eq!(ledger.sent, 2000);
    the_books_balance(&ledger).await;
    ledger.gateway.shutdown().await;
}
