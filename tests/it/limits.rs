//! Virtual keys' limits: rpm, tpm, concurrency, allow-list, budgets (with an injected clock),
//! streamed usage, the rate headers, `/admin/keys/{name}/usage`, and two real gateway
//! processes sharing one real `redis-server`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use weir::Gateway;
use weir::limits::budget::Clock;

use crate::support::{self, Behavior, MockUpstream, body_json, http, read_sse, sse_events};

pub(crate) const KEY: &str = "sk-limited-0123456789";
pub(crate) const ADMIN: &str = "admin-secret";

/// One backend `up`, models `chat` (priced at $1 per token either way) and `embed`, and one
/// key `limited` allowed `chat` only, with `limits` as its YAML (`rate:`/`budget:` lines).
pub(crate) fn yaml(upstream: &str, limits: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: {ADMIN} }}
backends:
  up: {{ kind: openai, base_url: {upstream}, api_key: sk-up }}
models:
  chat:
    targets: [ {{ backend: up, model: upstream-chat }} ]
    price: {{ input_per_mtok: 1000000, output_per_mtok: 1000000 }}
  embed: {{ targets: [ {{ backend: up, model: upstream-embed }} ] }}
keys:
  - name: limited
    key: {hash}
    models: [chat]
{limits}
auth: {{ mode: keys }}
"#,
        hash = weir::auth::hash_key(KEY)
    )
}

pub(crate) async fn gateway(limits: &str) -> (Gateway, MockUpstream) {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream.url(), limits)).await;
    (gateway, upstream)
}

pub(crate) fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

pub(crate) async fn send(gateway: &Gateway, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request reaches the gateway")
}

async fn chat(gateway: &Gateway) -> (http::StatusCode, http::HeaderMap, Value) {
    body_json(send(gateway, &chat_body(json!({}))).await).await
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers.get(name).unwrap_or_else(|| panic!("missing {name} in {headers:?}")).to_str().expect("ASCII header")
}

pub(crate) async fn usage_of(gateway: &Gateway, name: &str, token: Option<&str>) -> (http::StatusCode, Value) {
    let mut request = http().get(format!("http://{}/admin/keys/{name}/usage", gateway.admin_addr()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let (status, _, body) = body_json(request.send().await.expect("admin request")).await;
    (status, body)
}

fn tokens_of(body: &Value) -> u64 {
    body["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens")
        + body["usage"]["completion_tokens"].as_u64().expect("completion_tokens")
}

#[tokio::test]
async fn the_sixth_request_of_rpm_five_gets_429_with_rate_headers() {
    let (gateway, upstream) = gateway("    rate: { rpm: 5 }").await;
    for expected_remaining in (0..5).rev() {
        let (status, headers, body) = chat(&gateway).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "5");
        assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), expected_remaining.to_string());
        assert!(header(&headers, "x-ratelimit-reset-requests").ends_with('s'));
        assert!(headers.get("x-ratelimit-limit-tokens").is_none(), "no tpm configured");
    }
    let (status, headers, body) = chat(&gateway).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = header(&headers, "retry-after").parse().expect("whole seconds");
    assert!((1..=12).contains(&retry), "one request comes back every 12 s, got {retry}");
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "5");
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("requests per min (RPM): Limit 5"), "{message}");
    assert_eq!(upstream.requests().len(), 5, "the refused request never went upstream");
}

#[tokio::test]
async fn tpm_counts_prompt_and_completion_as_reported() {
    let (gateway, _upstream) = gateway("    rate: { tpm: 60 }").await;
    let (status, headers, body) = chat(&gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "60");
    let used = tokens_of(&body);

    let (status, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage["totals"]["prompt_tokens"].as_u64().unwrap() + usage["totals"]["completion_tokens"].as_u64().unwrap(),
        used
    );
    // The window holds the real usage (the estimate was replaced), less what refilled since
    // (one token a second).
    let in_window = usage["tokens"]["used"].as_u64().expect("tokens.used");
    assert!(in_window <= used && in_window + 3 >= used, "window {in_window}, reported {used}");

    // A request that may need more than what is left is refused, naming the tokens window.
    let (status, headers, body) = body_json(send(&gateway, &chat_body(json!({"max_tokens": 45}))).await).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "tokens");
    assert!(body["error"]["message"].as_str().unwrap().contains("tokens per min (TPM): Limit 60"), "{body}");
    assert!(header(&headers, "retry-after").parse::<u64>().unwrap() >= 1);
    // One that could never fit the window is "too large", and waiting would not help.
    let (status, headers, body) = body_json(send(&gateway, &chat_body(json!({"max_tokens": 200}))).await).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Request too large"), "{body}");
    assert!(headers.get("retry-after").is_none());
}

#[tokio::test]
async fn concurrency_limit_holds_until_the_stream_ends() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(30))).await;
    let gateway = support::start(&yaml(&upstream.url(), "    rate: { concurrent: 1 }")).await;
    let first = send(&gateway, &chat_body(json!({"stream": true}))).await;
    assert_eq!(first.status(), 200);

    let (status, headers, body) = chat(&gateway).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "concurrency_limit_exceeded");
    assert_eq!(header(&headers, "retry-after"), "1");

    let text = read_sse(first).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let (status, _, body) = chat(&gateway).await;
    assert_eq!(status, 200, "the place was freed when the stream ended: {body}");
}

#[tokio::test]
async fn a_model_outside_the_allow_list_is_403() {
    let (gateway, upstream) = gateway("    rate: { rpm: 100 }").await;
    let response = http()
        .post(format!("{}/embeddings", support::base_url(&gateway)))
        .bearer_auth(KEY)
        .json(&json!({"model": "embed", "input": "x"}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = body_json(response).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert!(upstream.requests().is_empty());
}

/// A wall clock the test moves.
#[derive(Debug, Clone)]
struct ManualClock(Arc<Mutex<SystemTime>>);

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

#[tokio::test]
async fn a_spent_budget_is_429_until_the_next_period() {
    let (gateway, _upstream) = gateway("    budget: { usd: 40, per: day }").await;
    // 2026-11-28T23:00:00Z: the day ends in an hour.
    let clock = ManualClock(Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(1_795_906_800))));
    gateway.state().snapshot().limits.set_clock(Box::new(clock.clone()));

    let mut spent = 0;
    let refusal = loop {
        let (status, headers, body) = chat(&gateway).await;
        if status == 429 {
            break (headers, body);
        }
        assert_eq!(status, 200, "{body}");
        spent += tokens_of(&body); // $1 per token
        assert!(spent <= 40, "a budget of $40 was overspent: ${spent}");
    };
    let (headers, body) = refusal;
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(body["error"]["message"].as_str().unwrap().contains("$40 per day"), "{body}");
    assert_eq!(header(&headers, "retry-after"), "3600");

    let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    assert_eq!(usage["budget"]["period"], "2026-11-28");
    assert_eq!(usage["budget"]["spent_usd"].as_f64().unwrap(), spent as f64);
    assert_eq!(usage["budget"]["reserved_usd"].as_f64().unwrap(), 0.0);

    *clock.0.lock().unwrap() += Duration::from_secs(3601);
    let (status, _, body) = chat(&gateway).await;
    assert_eq!(status, 200, "a new day, a new budget: {body}");
    let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    assert_eq!(usage["budget"]["period"], "2026-11-29");
    assert_eq!(usage["budget"]["spent_usd"].as_f64().unwrap(), tokens_of(&body) as f64);
}

#[tokio::test]
async fn streamed_usage_is_counted_and_only_shown_when_asked_for() {
    let (gateway, upstream) = gateway("    rate: { tpm: 100000 }").await;
    let (_, _, json_answer) = chat(&gateway).await;
    let per_request = tokens_of(&json_answer);

    // Not asked for: weir asks upstream, counts it, and keeps the usage chunk to itself.
    let text = read_sse(send(&gateway, &chat_body(json!({"stream": true}))).await).await;
    let events = sse_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk["choices"].as_array().is_some_and(|c| !c.is_empty()), "extra chunk reached the client: {event}");
        assert!(chunk.get("usage").is_none(), "the client did not ask for usage: {event}");
    }
    let sent = upstream.requests().last().unwrap().json();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Asked for: the client gets it as the upstream sent it.
    let text =
        read_sse(send(&gateway, &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}))).await)
            .await;
    let events = sse_events(&text);
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(tokens_of(&usage_chunk), per_request);

    let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    let totals = &usage["totals"];
    assert_eq!(totals["requests"], 3);
    assert_eq!(
        totals["prompt_tokens"].as_u64().unwrap() + totals["completion_tokens"].as_u64().unwrap(),
        3 * per_request,
        "both streams were counted: {usage}"
    );
}

#[tokio::test]
async fn key_usage_needs_the_admin_token_and_a_known_key() {
    let (gateway, _upstream) = gateway("    rate: { rpm: 50, tpm: 10000, concurrent: 4 }").await;
    assert_eq!(usage_of(&gateway, "limited", None).await.0, 401);
    let (status, body) = usage_of(&gateway, "nobody", Some(ADMIN)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "key_not_found");

    let (status, _, answer) = chat(&gateway).await;
    assert_eq!(status, 200);
    let (status, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["store"], "memory");
    assert_eq!(usage["limits"], json!({"rpm": 50, "tpm": 10000, "concurrent": 4, "budget": null}));
    assert_eq!(usage["requests"]["limit"], 50);
    assert_eq!(usage["requests"]["used"], 1);
    assert_eq!(usage["concurrent"]["in_flight"], 0);
    assert_eq!(usage["totals"]["requests"], 1);
    assert_eq!(usage["totals"]["cost_usd"].as_f64().unwrap(), tokens_of(&answer) as f64);
}

// === Two processes, one Redis ===

/// Kills the child when the test ends, however it ends.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(child: &mut ChildGuard, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + support::DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {addr} in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-server` on a free port, or `None` (skip) when it is not installed outside CI.
pub(crate) fn start_redis() -> Option<(ChildGuard, u16)> {
    let port = free_port();
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => {
            let mut guard = ChildGuard(child);
            wait_listening(&mut guard, SocketAddr::from(([127, 0, 0, 1], port)), "redis-server");
            Some((guard, port))
        }
        Err(err) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("redis-server is required under CI=true: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: redis-server is not available ({err}); install it to run this test");
            None
        }
    }
}

fn spawn_weir(dir: &std::path::Path, name: &str, redis_port: u16) -> (ChildGuard, SocketAddr) {
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"server: {{ listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{admin} }}
backends:
  mock: {{ kind: mock, latency: 1ms }}
models:
  mock: {{ targets: [ {{ backend: mock, model: mock }} ] }}
keys:
  - name: shared
    key: {hash}
    rate: {{ rpm: 100 }}
auth: {{ mode: keys }}
state: {{ store: "redis://127.0.0.1:{redis_port}/", timeout: 1s }}
"#,
        hash = weir::auth::hash_key(KEY)
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    let stderr = std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn weir serve");
    let mut guard = ChildGuard(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(&mut guard, addr, name);
    (guard, addr)
}

#[tokio::test]
async fn two_gateways_sharing_redis_admit_what_one_would() {
    let Some((_redis, redis_port)) = start_redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_a, addr_a) = spawn_weir(dir.path(), "a", redis_port);
    let (_b, addr_b) = spawn_weir(dir.path(), "b", redis_port);

    let client = http();
    let started = Instant::now();
    let requests = (0..300).map(|i| {
        let client = client.clone();
        let addr = if i % 2 == 0 { addr_a } else { addr_b };
        async move {
            let response = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .bearer_auth(KEY)
                .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .expect("request");
            response.status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(admitted + refused, 300, "only 200 or 429: {statuses:?}");
    // GCRA gives one request back every 600 ms: a slow burst may earn a few more.
    let regained = (elapsed.as_millis() / 600) as usize;
    assert!(
        (98..=102 + regained).contains(&admitted),
        "two replicas with rpm 100 admitted {admitted} of 300 in {elapsed:?}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_fails_open_or_closed_as_configured() {
    let closed = free_port(); // nothing listens there
    for (on_error, expected) in [("open", 200), ("closed", 503)] {
        let limits = format!(
            "    rate: {{ rpm: 5 }}\nstate: {{ store: \"redis://127.0.0.1:{closed}/\", on_error: {on_error}, timeout: 200ms }}"
        );
        let (gateway, _upstream) = gateway(&limits).await;
        for _ in 0..2 {
            let (status, headers, body) = chat(&gateway).await;
            assert_eq!(status, expected, "on_error: {on_error}: {body}");
            if expected == 200 {
                assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "5", "local counters decide");
            } else {
                assert_eq!(body["error"]["code"], "limits_unavailable");
            }
        }
    }
}

#[tokio::test]
async fn redis_budget_spend_survives_a_restart() {
    let Some((_redis, redis_port)) = start_redis() else { return };
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let limits = format!(
        "    rate: {{ rpm: 10, concurrent: 8 }}\n    budget: {{ usd: 1000, per: month }}\n\
         state: {{ store: \"redis://127.0.0.1:{redis_port}/\", timeout: 1s }}"
    );
    let config = yaml(&upstream.url(), &limits);

    let first = support::start(&config).await;
    let mut spent = 0;
    for _ in 0..2 {
        let (status, headers, body) = chat(&first).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "10");
        spent += tokens_of(&body);
    }
    // Settlements run off the request; wait until Redis has both.
    let mut usage = Value::Null;
    for _ in 0..200 {
        usage = usage_of(&first, "limited", Some(ADMIN)).await.1;
        if usage["budget"]["reserved_usd"] == 0.0 && usage["concurrent"]["in_flight"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(usage["store"], "redis", "{usage}");
    assert_eq!(usage["budget"]["spent_usd"].as_f64().unwrap(), spent as f64, "{usage}");
    assert_eq!(usage["requests"]["used"], 2, "{usage}");
    first.shutdown().await;

    let second = support::start(&config).await;
    let (_, usage) = usage_of(&second, "limited", Some(ADMIN)).await;
    assert_eq!(usage["budget"]["spent_usd"].as_f64().unwrap(), spent as f64, "spend kept in Redis: {usage}");
    assert_eq!(usage["totals"]["requests"], 0, "totals are per process");
}
