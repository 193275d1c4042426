//! Routing: weighted splits, sticky variants, pinning, retries, fallbacks and ejection,
//! against the real gateway over loopback with fault-injecting upstreams.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use serde_json::Value;
use weir::Gateway;

use crate::support::upstream::End;
use crate::support::{self, Behavior, MockUpstream};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

fn head() -> &'static str {
    "server: { listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }\nauth: { mode: none }\n"
}

/// An `openai` backend entry named `name` at `upstream`, with short timeouts.
fn upstream_backend(name: &str, upstream: &MockUpstream) -> String {
    format!(
        "  {name}: {{ kind: openai, base_url: {}, timeouts: {{ connect: 1s, first_byte: 2s, total: 10s, idle: 2s }} }}\n",
        upstream.url()
    )
}

/// A gateway whose model `chat` has `model` (the YAML body of `models.chat`) over `backends`.
async fn gateway(backends: &str, model: &str) -> Gateway {
    support::start(&format!("{}backends:\n{backends}models:\n  chat:\n{model}", head())).await
}

/// Sends one chat request; `user` goes in the body, `headers` on the request.
async fn chat(gateway: &Gateway, user: Option<&str>, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Value) {
    chat_with(&support::http(), gateway, user, headers).await
}

/// [`chat`] on a client that keeps its connections (for many requests).
async fn chat_with(
    client: &reqwest::Client,
    gateway: &Gateway,
    user: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Value) {
    let body = match user {
        Some(user) => {
            serde_json::json!({"model": "chat", "user": user, "messages": [{"role": "user", "content": "hi"}]})
                .to_string()
        }
        None => CHAT.to_owned(),
    };
    let mut request = client
        .post(format!("http://{}/v1/chat/completions", gateway.addr()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    support::body_json(request.send().await.expect("request reaches the gateway")).await
}

fn header<'h>(headers: &'h http::HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The variant of each of `n` requests, sent 32 at a time; `user(i)` names request i's user.
async fn variants_of(gateway: &Gateway, n: usize, user: impl Fn(usize) -> Option<String>) -> Vec<String> {
    let client = support::http();
    let requests = (0..n).map(|i| {
        let user = user(i);
        let client = &client;
        async move {
            let (status, headers, body) = chat_with(client, gateway, user.as_deref(), &[]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            header(&headers, "x-weir-variant").to_owned()
        }
    });
    futures_util::stream::iter(requests).buffered(32).collect().await
}

const MOCKS: &str = "  ma: { kind: mock }\n  mb: { kind: mock }\n  mc: { kind: mock }\n";

#[tokio::test]
async fn an_80_20_split_holds_over_2000_requests() {
    let model = "    targets:
      - { backend: ma, model: a, weight: 80, variant: control }
      - { backend: mb, model: b, weight: 20, variant: candidate }
";
    let gateway = gateway(MOCKS, model).await;
    let variants = variants_of(&gateway, 2000, |_| None).await;
    let control = variants.iter().filter(|v| *v == "control").count();
    let candidate = variants.iter().filter(|v| *v == "candidate").count();
    assert_eq!(control + candidate, 2000, "every answer names its variant");
    let share = control as f64 / 2000.0;
    assert!((share - 0.8).abs() <= 0.03, "control got {:.1}% of requests", share * 100.0);
}

#[tokio::test]
async fn sticky_users_keep_their_variant_when_a_small_target_is_added() {
    let two = "    sticky: user
    targets:
      - { backend: ma, model: a, weight: 80, variant: control }
      - { backend: mb, model: b, weight: 20, variant: candidate }
";
    let three = format!("{two}      - {{ backend: mc, model: c, weight: 5, variant: canary }}\n");
    let before = gateway(MOCKS, two).await;
    let replica = gateway(MOCKS, two).await;
    let after = gateway(MOCKS, &three).await;
    let users = 600;
    let user = |i: usize| Some(format!("user-{i}"));
    let first = variants_of(&before, users, user).await;
    assert_eq!(variants_of(&before, users, user).await, first, "the same user gets the same variant");
    assert_eq!(variants_of(&replica, users, user).await, first, "on every replica");
    let changed = variants_of(&after, users, user).await;
    let mut moved = 0;
    for (i, (was, now)) in first.iter().zip(&changed).enumerate() {
        if was != now {
            assert_eq!(now, "canary", "user-{i} moved from {was} to {now}: only moves to the new target are allowed");
            moved += 1;
        }
    }
    // 5 of 105 is about 29 users of 600.
    assert!((10..=60).contains(&moved), "{moved} users moved to the canary");
    let control = first.iter().filter(|v| *v == "control").count();
    assert!((420..=540).contains(&control), "control has {control} of {users} users");
}

#[tokio::test]
async fn a_sticky_header_and_a_pin_choose_the_variant() {
    let model = "    sticky: header:x-session
    targets:
      - { backend: ma, model: a, weight: 50, variant: control }
      - { backend: mb, model: b, weight: 50, variant: candidate }
";
    let gateway = gateway(MOCKS, model).await;
    let client = support::http();
    let mut seen = HashMap::new();
    for session in 0..40 {
        let session = format!("s{session}");
        let (_, headers, _) = chat_with(&client, &gateway, None, &[("x-session", &session)]).await;
        let variant = header(&headers, "x-weir-variant").to_owned();
        for _ in 0..3 {
            let (_, again, _) = chat_with(&client, &gateway, None, &[("x-session", &session)]).await;
            assert_eq!(header(&again, "x-weir-variant"), variant, "session {session}");
        }
        *seen.entry(variant).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "sessions spread over both variants: {seen:?}");

    for _ in 0..20 {
        let (status, headers, _) = chat_with(&client, &gateway, None, &[("x-weir-variant", "candidate")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "x-weir-variant"), "candidate");
        assert_eq!(header(&headers, "x-weir-backend"), "mb");
    }
    let (status, _, body) = chat_with(&client, &gateway, None, &[("x-weir-variant", "nope")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "x-weir-variant");
    assert!(body["error"]["message"].as_str().unwrap().contains("control, candidate"), "{body}");
}

/// A primary upstream `p` and a fallback `f`, retrying twice on 500 and 503.
async fn primary_and_fallback(primary: &MockUpstream, fallback: &MockUpstream) -> Gateway {
    let backends = format!("{}{}", upstream_backend("p", primary), upstream_backend("f", fallback));
    let model = "    targets: [ { backend: p, model: primary-model } ]
    fallbacks: [ { backend: f, model: fallback-model } ]
    retry: { attempts: 2, on: [500, 503, connect] }
";
    gateway(&backends, model).await
}

#[tokio::test]
async fn a_failing_primary_falls_back_after_its_retries() {
    let primary = MockUpstream::start(Behavior::error(500, "primary is down")).await;
    let fallback = MockUpstream::start(Behavior::mock()).await;
    let gateway = primary_and_fallback(&primary, &fallback).await;
    let (status, headers, body) = chat(&gateway, None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-weir-backend"), "f");
    assert_eq!(header(&headers, "x-weir-variant"), "f");
    assert_eq!(primary.requests().len(), 2, "first try and one retry");
    assert_eq!(fallback.only_request().json()["model"], "fallback-model");
}

#[tokio::test]
async fn a_client_error_is_relayed_without_retry_or_fallback() {
    let primary = MockUpstream::start(Behavior::error(400, "bad temperature")).await;
    let fallback = MockUpstream::start(Behavior::mock()).await;
    let gateway = primary_and_fallback(&primary, &fallback).await;
    let (status, headers, body) = chat(&gateway, None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["message"], "bad temperature");
    assert_eq!(header(&headers, "x-weir-backend"), "p");
    assert_eq!(primary.requests().len(), 1);
    assert!(fallback.requests().is_empty());
}

#[tokio::test]
async fn a_primary_that_fails_once_succeeds_by_retry() {
    let primary = MockUpstream::start(Behavior::mock()).await;
    primary.queue(Behavior::error(503, "try again"));
    let fallback = MockUpstream::start(Behavior::mock()).await;
    let gateway = primary_and_fallback(&primary, &fallback).await;
    let (status, headers, body) = chat(&gateway, None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-weir-backend"), "p");
    assert_eq!(primary.requests().len(), 2);
    assert!(fallback.requests().is_empty());
}

#[tokio::test]
async fn everything_failing_is_a_502_with_the_last_message() {
    let primary = MockUpstream::start(Behavior::error(500, "primary is down")).await;
    let fallback = MockUpstream::start(Behavior::Close).await;
    let gateway = primary_and_fallback(&primary, &fallback).await;
    let (status, headers, body) = chat(&gateway, None, &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(header(&headers, "x-weir-backend"), "f", "names the last backend tried");
    assert_eq!(primary.requests().len(), 2);
    assert_eq!(fallback.requests().len(), 2, "dropped connections are retried under `connect`");
}

#[tokio::test]
async fn a_stream_cut_after_its_first_byte_is_not_retried() {
    let primary = MockUpstream::start(Behavior::stream_then(2, End::Cut)).await;
    let fallback = MockUpstream::start(Behavior::mock()).await;
    let gateway = primary_and_fallback(&primary, &fallback).await;
    let response = support::http()
        .post(format!("http://{}/v1/chat/completions", gateway.addr()))
        .header("content-type", "application/json")
        .body(r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = support::sse_events(&support::read_sse(response).await);
    assert!(events.len() >= 2, "a chunk, then the error: {events:?}");
    assert!(events[0].contains("chat.completion.chunk"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(primary.requests().len(), 1);
    assert!(fallback.requests().is_empty(), "a started stream is never replayed elsewhere");
}

/// Model `chat` split evenly over the built-in mock `ma` (variant `a`) and upstream `b`.
async fn split_with_upstream(b: &MockUpstream, extra: &str) -> Gateway {
    let backends = format!("  ma: {{ kind: mock }}\n{}", upstream_backend("b", b));
    let model = format!(
        "    targets:
      - {{ backend: ma, model: a, variant: a }}
      - {{ backend: b, model: b, variant: b }}
{extra}"
    );
    gateway(&backends, &model).await
}

#[tokio::test]
async fn a_rate_limited_target_is_out_for_the_time_it_asked_and_back_after_a_probe() {
    let b = MockUpstream::start(Behavior::mock()).await;
    b.queue(Behavior::error(429, "slow down").with_header("retry-after", "1"));
    b.queue(Behavior::error(429, "still too fast").with_header("x-ratelimit-reset-requests", "600ms"));
    let gateway = split_with_upstream(&b, "").await;
    let pin = [("x-weir-variant", "b")];

    let (status, headers, body) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "relayed: no fallback to take it");
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(body["error"]["message"], "slow down");

    // Out of rotation: the split sends everything to `a`, a pin to `b` fails fast.
    let variants = variants_of(&gateway, 20, |_| None).await;
    assert!(variants.iter().all(|v| v == "a"), "{variants:?}");
    let (status, headers, body) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "out for a rate limit: the client is told to wait");
    assert_eq!(body["error"]["code"], "upstream_rate_limited");
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(b.requests().len(), 1, "no traffic while ejected");

    // After the second: one probe, which is rate limited again (for 600 ms).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, body) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "upstream_rate_limited", "the failed probe put it back out");
    assert_eq!(b.requests().len(), 2);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, headers, _) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::OK, "the probe succeeds");
    assert_eq!(header(&headers, "x-weir-backend"), "b");
    let variants = variants_of(&gateway, 200, |_| None).await;
    assert!(variants.iter().any(|v| v == "b"), "back in the split after the probe");
}

#[tokio::test]
async fn consecutive_failures_eject_a_target_and_all_ejected_is_a_fast_502() {
    let b = MockUpstream::start(Behavior::error(500, "broken")).await;
    let gateway = split_with_upstream(&b, "").await;
    let pin = [("x-weir-variant", "b")];
    for _ in 0..weir::router::CONSECUTIVE_FAILURES {
        let (status, _, body) = chat(&gateway, None, &pin).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body["error"]["message"].as_str().unwrap().contains("broken"), "{body}");
    }
    let ejected = b.requests().len();
    assert_eq!(ejected, weir::router::CONSECUTIVE_FAILURES as usize);
    let (status, headers, body) = chat(&gateway, None, &pin).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "no_healthy_target", "{body}");
    assert_eq!(header(&headers, "x-weir-backend"), "");
    let variants = variants_of(&gateway, 50, |_| None).await;
    assert!(variants.iter().all(|v| v == "a"), "the split skips the ejected target");
    assert_eq!(b.requests().len(), ejected, "an ejected target gets nothing");
}

#[tokio::test]
async fn a_target_that_cannot_be_reached_moves_on_to_the_other_of_its_variant() {
    // Two targets of one variant: the dead one's share goes to its sibling, not to an error.
    let dead = MockUpstream::start(Behavior::Close).await;
    let backends = format!("  ma: {{ kind: mock }}\n{}", upstream_backend("dead", &dead));
    let model = "    targets:
      - { backend: ma, model: a, variant: pool }
      - { backend: dead, model: d, variant: pool }
";
    let gateway = gateway(&backends, model).await;
    let client = support::http();
    for _ in 0..40 {
        let (status, headers, body) = chat_with(&client, &gateway, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(header(&headers, "x-weir-backend"), "ma");
    }
    assert!(dead.requests().len() <= weir::router::CONSECUTIVE_FAILURES as usize, "ejected after a few failures");
}
