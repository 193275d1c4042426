//! The response cache end to end: hits and misses, canonical keys, scopes, replays between
//! JSON and SSE (read with async-openai), coalescing of identical requests, what is never
//! stored, TTL, the size bound, and entries shared through a real Redis.

use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use weir::Gateway;

use crate::support::upstream::End;
use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY, Timeouts};

const PROMPT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"what is a weir?"}],"temperature":0.2}"#;

/// The standard fixture with caching on for `chat` and the given top-level `cache:` section.
fn cached_yaml(upstream_url: &str, ttl: &str, cache: &str) -> String {
    // Roomy timeouts: fifty clients, the gateway and the upstream share one test runtime on
    // a busy machine, and a leader timing out would (rightly) send its followers upstream.
    let timeouts = Timeouts { first_byte: "8s", idle: "8s", ..Timeouts::default() };
    let yaml = support::standard_yaml(upstream_url, timeouts);
    let chat = "targets: [ { backend: up, model: upstream-chat } ]";
    assert!(yaml.contains(chat), "the standard fixture changed");
    let yaml = yaml.replace(chat, &format!("{chat}\n    cache: {{ ttl: {ttl} }}"));
    format!("{yaml}cache: {cache}\n")
}

async fn cached(upstream: &MockUpstream, ttl: &str, cache: &str) -> Gateway {
    support::start(&cached_yaml(&upstream.url(), ttl, cache)).await
}

/// POSTs `body` to chat completions with `key` and extra headers; status, headers, body bytes.
async fn post(gateway: &Gateway, key: &str, body: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(support::DEADLINE, response.bytes()).await.expect("body in time");
    (status, headers, bytes.unwrap_or_default())
}

fn cache_of(headers: &HeaderMap) -> &str {
    headers.get("x-weir-cache").and_then(|v| v.to_str().ok()).unwrap_or("<none>")
}

#[tokio::test]
async fn a_repeated_request_is_a_hit_with_identical_bytes() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    let (status, headers, first) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cache_of(&headers), "miss");
    let (status, headers, second) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(cache_of(&headers), "hit");
    assert_eq!(headers.get("x-weir-backend").and_then(|v| v.to_str().ok()), Some("up"));
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    assert_eq!(first, second, "a hit returns the stored bytes exactly");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn key_order_and_whitespace_hit_but_a_changed_parameter_misses() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;
    post(&gateway, TEAM_KEY, PROMPT, &[]).await;

    let reordered = "{ \"temperature\" : 0.2,\n \"messages\": [ {\"content\": \"what is a weir?\", \"role\": \"user\"} ],\n \"model\":\"chat\", \"user\": \"someone\" }";
    let (_, headers, _) = post(&gateway, TEAM_KEY, reordered, &[]).await;
    assert_eq!(cache_of(&headers), "hit", "key order, whitespace and `user` do not split entries");

    let warmer = PROMPT.replace("0.2", "0.9");
    let (_, headers, _) = post(&gateway, TEAM_KEY, &warmer, &[]).await;
    assert_eq!(cache_of(&headers), "miss", "another temperature is another answer");
    let longer = PROMPT.replace("}],", "}],\"max_tokens\":3,");
    let (_, headers, _) = post(&gateway, TEAM_KEY, &longer, &[]).await;
    assert_eq!(cache_of(&headers), "miss");
    assert_eq!(upstream.requests().len(), 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn entries_are_scoped_to_the_key_unless_global() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB, scope: key }").await;
    post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    let (_, headers, _) = post(&gateway, ALL_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "miss", "key `all` must not see what key `team` stored");
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "hit");
    gateway.shutdown().await;

    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB, scope: global }").await;
    post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    let (_, headers, _) = post(&gateway, ALL_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "hit", "scope: global shares entries between keys");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn cache_control_no_cache_bypasses_and_no_store_does_not_store() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[("cache-control", "no-store")]).await;
    assert_eq!(cache_of(&headers), "miss");
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "miss", "no-store kept the first answer out");
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_of(&headers), "bypass");
    assert_eq!(upstream.requests().len(), 3);
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "hit");

    // A model without `cache` says bypass on every response.
    let embed = r#"{"model":"embed","input":"x"}"#;
    let response = support::http()
        .post(format!("{}/embeddings", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .header("content-type", "application/json")
        .body(embed)
        .send()
        .await
        .expect("sent");
    assert_eq!(cache_of(response.headers()), "bypass");
    gateway.shutdown().await;
}

fn sdk_request(stream_usage: Option<bool>) -> CreateChatCompletionRequest {
    let mut request = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages(vec![ChatCompletionRequestUserMessage::from("replay me, please").into()])
        .max_completion_tokens(12u32)
        .build()
        .expect("request builds");
    request.stream_options = stream_usage
        .map(|include| ChatCompletionStreamOptions { include_usage: Some(include), include_obfuscation: None });
    request
}

/// Streams `request` with the SDK: (content, finish reason, usage total tokens).
async fn sdk_stream(gateway: &Gateway, request: CreateChatCompletionRequest) -> (String, String, Option<u32>) {
    sdk_stream_at(support::base_url(gateway), request).await
}

async fn sdk_stream_at(base_url: String, request: CreateChatCompletionRequest) -> (String, String, Option<u32>) {
    let config = async_openai::config::OpenAIConfig::new().with_api_base(base_url).with_api_key(TEAM_KEY);
    let client = async_openai::Client::build(support::http(), config);
    let mut stream = client.chat().create_stream(request).await.expect("stream starts");
    let (mut content, mut finish, mut usage) = (String::new(), String::new(), None);
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        let chunk = chunk.expect("chunk parses");
        for choice in &chunk.choices {
            content.push_str(choice.delta.content.as_deref().unwrap_or_default());
            if let Some(reason) = choice.finish_reason {
                finish = format!("{reason:?}");
            }
        }
        if let Some(u) = chunk.usage {
            usage = Some(u.total_tokens);
        }
    }
    (content, finish, usage)
}

async fn sdk_json(gateway: &Gateway, request: CreateChatCompletionRequest) -> (String, String, Option<u32>) {
    let client = support::openai(gateway, Some(TEAM_KEY));
    let response = client.chat().create(request).await.expect("answer parses");
    let choice = &response.choices[0];
    let finish = choice.finish_reason.map(|r| format!("{r:?}")).unwrap_or_default();
    (choice.message.content.clone().unwrap_or_default(), finish, response.usage.map(|u| u.total_tokens))
}

#[tokio::test]
async fn a_stream_replays_as_a_stream_and_as_json() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    let original = sdk_stream(&gateway, sdk_request(Some(true))).await;
    assert!(!original.0.is_empty() && original.2.is_some(), "{original:?}");
    let replay = sdk_stream(&gateway, sdk_request(Some(true))).await;
    assert_eq!(replay, original, "stream to stream, usage asked for");
    let without_usage = sdk_stream(&gateway, sdk_request(None)).await;
    assert_eq!(without_usage, (original.0.clone(), original.1.clone(), None), "no usage chunk unless asked");
    let json = sdk_json(&gateway, sdk_request(None)).await;
    assert_eq!(json, original, "stream to JSON");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_json_answer_replays_as_a_stream() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    let original = sdk_json(&gateway, sdk_request(None)).await;
    assert!(original.2.is_some(), "{original:?}");
    let replay = sdk_stream(&gateway, sdk_request(Some(true))).await;
    assert_eq!(replay, original, "JSON to stream with the usage chunk");
    let plain = sdk_stream(&gateway, sdk_request(Some(false))).await;
    assert_eq!(plain.2, None);

    // The raw replay is SSE as OpenAI sends it.
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"replay me, please"}],"max_completion_tokens":12,"stream":true}"#;
    let (status, headers, bytes) = post(&gateway, TEAM_KEY, body, &[]).await;
    assert_eq!((status.as_u16(), cache_of(&headers)), (200, "hit"));
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let text = std::str::from_utf8(&bytes).expect("UTF-8");
    let events = support::sse_events(text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_json_requests_make_one_upstream_call() {
    let upstream = MockUpstream::start(Behavior::mock().delayed(Duration::from_millis(300))).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    let calls = (0..50).map(|_| post(&gateway, TEAM_KEY, PROMPT, &[]));
    let answers = futures_util::future::join_all(calls).await;
    assert_eq!(upstream.requests().len(), 1, "coalesced into one upstream call");
    let first = &answers[0].2;
    for (status, headers, body) in &answers {
        assert_eq!(*status, 200);
        assert!(matches!(cache_of(headers), "hit" | "miss"));
        assert_eq!(body, first);
    }
    assert_eq!(answers.iter().filter(|(_, h, _)| cache_of(h) == "miss").count(), 1);
    assert_eq!(gateway.state().snapshot().cache.in_flight(), 0, "finished flights are forgotten");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_streams_make_one_upstream_call() {
    let upstream =
        MockUpstream::start(Behavior::paced(Duration::from_millis(30)).delayed(Duration::from_millis(200))).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;

    // The leader asks for usage; followers asking the same take its bytes as they come,
    // the others are served the stored answer in their own shape once it is complete.
    let base = support::base_url(&gateway);
    let start = |usage: Option<bool>| {
        let base = base.clone();
        tokio::spawn(async move { (usage, sdk_stream_at(base, sdk_request(usage)).await) })
    };
    let mut tasks = vec![start(Some(true))];
    assert!(support::eventually(support::DEADLINE, || upstream.requests().len() == 1).await);
    for i in 1..50 {
        tasks.push(start(if i % 2 == 0 { Some(true) } else { None }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("stream task"));
    }
    let bodies: Vec<String> =
        upstream.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert_eq!(bodies.len(), 1, "coalesced into one upstream call: {bodies:#?}");
    let content = &answers[0].1.0;
    assert!(!content.is_empty());
    for (usage, (text, finish, total)) in &answers {
        assert_eq!(text, content);
        assert!(!finish.is_empty());
        assert_eq!(total.is_some(), usage.is_some(), "usage only when asked ({usage:?})");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn errors_and_cut_streams_are_not_stored() {
    let upstream = MockUpstream::start(Behavior::error(500, "boom")).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;
    let (status, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!((status.as_u16(), cache_of(&headers)), (502, "miss"));
    upstream.set(Behavior::mock());
    let (status, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!((status.as_u16(), cache_of(&headers)), (200, "miss"), "the error was not stored");

    let streamed = PROMPT.replace("}],", "}],\"stream\":true,").replace("weir?", "dam?");
    upstream.set(Behavior::stream_then(3, End::Cut));
    let (status, _, bytes) = post(&gateway, TEAM_KEY, &streamed, &[]).await;
    assert_eq!(status, 200);
    assert!(std::str::from_utf8(&bytes).expect("UTF-8").contains("\"error\""), "the cut stream ended with an error");
    upstream.set(Behavior::mock());
    let (_, headers, bytes) = post(&gateway, TEAM_KEY, &streamed, &[]).await;
    assert_eq!(cache_of(&headers), "miss", "the cut stream was not stored");
    assert!(std::str::from_utf8(&bytes).expect("UTF-8").ends_with("data: [DONE]\n\n"));
    let (_, headers, _) = post(&gateway, TEAM_KEY, &streamed, &[]).await;
    assert_eq!(cache_of(&headers), "hit", "the whole stream was");
    assert_eq!(upstream.requests().len(), 4);
    gateway.shutdown().await;
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "300ms", "{ max_size: 1MiB }").await;
    post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "hit");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, headers, _) = post(&gateway, TEAM_KEY, PROMPT, &[]).await;
    assert_eq!(cache_of(&headers), "miss", "the entry outlived its ttl");
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_store_stays_within_max_size() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 4KiB }").await;
    for i in 0..40 {
        let body = PROMPT.replace("weir?", &format!("weir number {i}?"));
        let (status, headers, _) = post(&gateway, TEAM_KEY, &body, &[]).await;
        assert_eq!((status.as_u16(), cache_of(&headers)), (200, "miss"));
    }
    let cache = std::sync::Arc::clone(&gateway.state().snapshot().cache);
    let (entries, bytes) = cache.usage();
    assert!(bytes <= 4096, "{bytes} bytes in {entries} entries");
    assert!(entries > 0 && entries < 40, "{entries} entries");
    gateway.shutdown().await;
}

/// A `redis-server` on a free port, killed when dropped.
pub(crate) struct RedisGuard {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl RedisGuard {
    /// Starts one; `None` (with a message) when redis-server is not installed, unless under
    /// `CI=true`, where a missing redis-server fails the test.
    pub(crate) fn start() -> Option<RedisGuard> {
        let port = crate::cli::free_port();
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("redis-server is required under CI=true: {err}")
            }
            Err(err) => {
                eprintln!("SKIPPED: redis-server is not available ({err}); install it to run the shared-store test");
                return None;
            }
        };
        let guard = RedisGuard { child, port };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = std::time::Instant::now() + support::DEADLINE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(guard)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `weir serve` (the real binary) in front of `upstream_url`, caching `chat` through Redis.
fn serve_with_redis(
    dir: &std::path::Path,
    name: &str,
    upstream_url: &str,
    redis_port: u16,
) -> (crate::cli::ServeGuard, String) {
    let (port, admin_port) = (crate::cli::free_port(), crate::cli::free_port());
    let config = format!(
        "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n\
         backends:\n  up: {{ kind: openai, base_url: \"{upstream_url}\" }}\n\
         models:\n  chat: {{ targets: [ {{ backend: up, model: upstream-chat }} ], cache: {{ ttl: 10m }} }}\n\
         auth: {{ mode: none }}\n\
         cache: {{ max_size: 1MiB, store: \"redis://127.0.0.1:{redis_port}\" }}\n"
    );
    let cwd = dir.join(name);
    std::fs::create_dir_all(&cwd).expect("replica dir");
    let path = cwd.join("weir.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut serve = crate::cli::ServeGuard::spawn_with_env(&cwd, &["--config", path.to_str().expect("UTF-8")], &[]);
    serve.wait_listening(format!("127.0.0.1:{port}").parse().expect("addr"));
    (serve, format!("http://127.0.0.1:{port}/v1"))
}

async fn post_at(base_url: &str, body: &str) -> (u16, String) {
    let response = support::http()
        .post(format!("{base_url}/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, cache_of(response.headers()).to_owned())
}

#[tokio::test]
async fn two_replicas_share_entries_through_redis_and_survive_its_loss() {
    support::init();
    let Some(mut redis) = RedisGuard::start() else { return };
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_one, one) = serve_with_redis(dir.path(), "one", &upstream.url(), redis.port);
    let (two_guard, two) = serve_with_redis(dir.path(), "two", &upstream.url(), redis.port);

    assert_eq!(post_at(&one, PROMPT).await, (200, "miss".to_owned()));
    // The fill is written in the background: the other replica sees it shortly.
    let mut seen = String::new();
    for _ in 0..50 {
        let (status, cache) = post_at(&two, PROMPT).await;
        assert_eq!(status, 200);
        seen = cache;
        if seen == "hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "hit", "replica two never saw replica one's entry:\n{}", two_guard.stderr());

    redis.kill();
    let other = PROMPT.replace("weir?", "sluice?");
    for base in [&one, &two] {
        assert_eq!(post_at(base, &other).await, (200, "miss".to_owned()), "Redis down: a miss, still answered");
        assert_eq!(post_at(base, &other).await, (200, "hit".to_owned()), "the local store keeps working");
        assert_eq!(post_at(base, PROMPT).await, (200, "hit".to_owned()));
    }
}

#[tokio::test]
async fn a_stream_whose_client_leaves_right_after_done_is_stored() {
    // SDKs stop reading at `data: [DONE]`; here the upstream even keeps the body open after
    // it, so the gateway only learns the stream is over from the client going away.
    let upstream = MockUpstream::start(Behavior::stream_then(10_000, End::Hang)).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;
    let body = PROMPT.replace("}],", "}],\"stream\":true,");

    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(TEAM_KEY)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    let mut chunks = response.bytes_stream();
    let mut text = String::new();
    while !text.ends_with("data: [DONE]\n\n") {
        let chunk = tokio::time::timeout(support::DEADLINE, chunks.next()).await.expect("chunk in time");
        text.push_str(std::str::from_utf8(&chunk.expect("stream open").expect("chunk")).expect("UTF-8"));
    }
    drop(chunks);
    assert!(support::eventually(support::DEADLINE, || upstream.cancelled() == 1).await, "the gateway let go");

    upstream.set(Behavior::error(500, "must not be asked again"));
    let (status, headers, bytes) = post(&gateway, TEAM_KEY, &body, &[]).await;
    assert_eq!((status.as_u16(), cache_of(&headers)), (200, "hit"));
    assert!(std::str::from_utf8(&bytes).expect("UTF-8").ends_with("data: [DONE]\n\n"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn followers_get_the_whole_stream_when_the_leader_leaves() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(40))).await;
    let gateway = cached(&upstream, "10m", "{ max_size: 1MiB }").await;
    let body = PROMPT.replace("}],", "}],\"stream\":true,\"max_tokens\":12,");
    let send = || {
        support::http()
            .post(format!("{}/chat/completions", support::base_url(&gateway)))
            .bearer_auth(TEAM_KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };

    let leader = send().await.expect("leader sent");
    let mut leader_chunks = leader.bytes_stream();
    let first = tokio::time::timeout(support::DEADLINE, leader_chunks.next()).await.expect("first chunk in time");
    assert!(first.is_some_and(|c| c.is_ok()));
    let follower = send().await.expect("follower sent");
    assert_eq!(cache_of(follower.headers()), "hit", "the follower reads the leader's stream");
    drop(leader_chunks);

    let text = support::read_sse(follower).await;
    assert!(!text.contains("\"error\""), "the follower's stream was cut: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        support::eventually(support::DEADLINE, || upstream.completed() == 1).await,
        "the upstream stream ran to its end"
    );
    let (_, headers, _) = post(&gateway, TEAM_KEY, &body, &[]).await;
    assert_eq!(cache_of(&headers), "hit", "and was stored");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;
}
