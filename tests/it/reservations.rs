//! Reservations under attack and under a bad network: client counts near the top of u64 are
//! refused (429 "Request too large" or 400 naming the field) instead of wrapping the limiter,
//! and a Redis admission that weir stopped waiting for (`state.timeout` during a stalled
//! Redis, or the client leaving) is rolled back exactly once, on a real `redis-server`
//! stopped with SIGSTOP.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::limits::{ADMIN, ChildGuard, chat_body, gateway, send, start_redis, usage_of, yaml};
use crate::support::{self, Behavior, MockUpstream, body_json};

#[tokio::test]
async fn counts_near_u64_max_are_refused_not_wrapped() {
    let (gateway, upstream) = gateway("    rate: { tpm: 100000 }").await;
    let too_large = [
        json!({"max_tokens": u64::MAX}),
        json!({"max_tokens": i64::MAX, "n": 4}),
        json!({"max_completion_tokens": 100_001}),
    ];
    for extra in too_large {
        let (status, headers, body) = body_json(send(&gateway, &chat_body(extra.clone())).await).await;
        assert_eq!(status, 429, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "tokens", "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("Request too large") && message.contains("Limit 100000"), "{message}");
        assert!(headers.get("retry-after").is_none(), "waiting does not help: {headers:?}");
        assert_eq!(headers["x-ratelimit-limit-tokens"], "100000");
    }
    let out_of_range = [
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_tokens": "lots"}), "max_tokens"),
        (json!({"max_completion_tokens": 1.5}), "max_completion_tokens"),
        (json!({"n": 0}), "n"),
        (json!({"n": 129}), "n"),
    ];
    for (extra, param) in out_of_range {
        let (status, _, body) = body_json(send(&gateway, &chat_body(extra.clone())).await).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    assert_eq!(upstream.requests().len(), 0, "nothing refused went upstream");
    let metrics = crate::support::http()
        .get(format!("http://{}/metrics", gateway.admin_addr()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"weir_ratelimit_rejections_total{key="limited",limit="tpm"} 3"#),
        "too large counts under the limit's config name; bad requests are no rejection:\n{metrics}"
    );
    // Nothing was taken: the bucket is full, not in debt, and an ordinary request passes.
    let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
    assert_eq!(usage["tokens"]["remaining"], 100_000, "{usage}");
    let (status, _, body) = body_json(send(&gateway, &chat_body(json!({}))).await).await;
    assert_eq!(status, 200, "{body}");
}

/// SIGSTOP / SIGCONT for the Redis child (a stall, not a crash: queued commands run later).
fn signal(redis: &ChildGuard, signal: &str) {
    let status = Command::new("kill").args([signal, &redis.0.id().to_string()]).status().expect("kill");
    assert!(status.success(), "kill {signal}");
}

/// What `/admin/keys/{name}/usage` says Redis holds for the key, the parts that do not
/// refill with time (a window's `used` falls back to 0 by itself within seconds here).
fn held(usage: &Value) -> Value {
    json!({
        "in_flight": usage["concurrent"]["in_flight"],
        "spent_usd": usage["budget"]["spent_usd"],
        "reserved_usd": usage["budget"]["reserved_usd"],
    })
}

/// Polls the key's usage until it equals `expected` (settlements run off the request).
async fn wait_for_usage(gateway: &weir::Gateway, expected: &Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, usage) = usage_of(gateway, "limited", Some(ADMIN)).await;
        // Right after a stall the store is left alone for a second (this replica's counters
        // are shown meanwhile): only Redis's own word counts here.
        let now = held(&usage);
        if usage["store"] == "redis" && &now == expected {
            return now;
        }
        if Instant::now() > deadline {
            return json!({"store": usage["store"], "held": now});
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LIMITS: &str = "    rate: { rpm: 50, tpm: 100000, concurrent: 2 }\n    budget: { usd: 1000, per: month }";

/// A gateway on Redis that has answered one request, so the scripts are loaded (an
/// `EVALSHA` of an unknown script queued during a stall would fail instead of admitting),
/// and the key's usage once that request is settled.
async fn redis_gateway(redis_port: u16, state: &str) -> (weir::Gateway, MockUpstream, Value) {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let limits = format!("{LIMITS}\nstate: {{ store: \"redis://127.0.0.1:{redis_port}/\", {state} }}");
    let gateway = support::start(&yaml(&upstream.url(), &limits)).await;
    let (status, _, body) = body_json(send(&gateway, &chat_body(json!({}))).await).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let usage = loop {
        let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
        let settled = usage["concurrent"]["in_flight"] == 0 && usage["budget"]["reserved_usd"] == 0.0;
        if settled || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(usage["requests"]["used"], 1, "{usage}");
    assert!(usage["budget"]["spent_usd"].as_f64().unwrap() > 0.0, "{usage}");
    (gateway, upstream, held(&usage))
}

/// The probe of issue 14: `concurrent: 2`, `state.timeout: 100ms`, Redis stopped for longer
/// than the connection's response timeout, under load. Every admission weir gave up on runs
/// when Redis resumes; each must be revoked, so the key is not locked out afterwards and the
/// shared windows hold what they held before.
#[tokio::test]
async fn admissions_given_up_during_a_redis_stall_are_rolled_back_once() {
    for on_error in ["open", "closed"] {
        let Some((redis, redis_port)) = start_redis() else { return };
        let (gateway, _upstream, before) =
            redis_gateway(redis_port, &format!("timeout: 100ms, on_error: {on_error}")).await;
        assert_eq!(before["in_flight"], 0, "{before}");

        signal(&redis, "-STOP");
        let statuses: Vec<u16> = futures_util::future::join_all(
            (0..6).map(|_| async { send(&gateway, &chat_body(json!({}))).await.status().as_u16() }),
        )
        .await;
        // Longer than the 2 s response timeout of the connection: it may be replaced, so
        // revokes can reach Redis before the admissions they undo.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        signal(&redis, "-CONT");

        // open: this replica's own counters decide (concurrent: 2 holds locally too);
        // closed: nothing is admitted without the store.
        let fine = |s: &u16| if on_error == "open" { [200, 429].contains(s) } else { *s == 503 };
        assert!(statuses.iter().all(fine), "on_error {on_error}: {statuses:?}");
        assert!(on_error == "closed" || statuses.contains(&200), "{statuses:?}");
        let after = wait_for_usage(&gateway, &before, Duration::from_secs(10)).await;
        assert_eq!(after, before, "on_error {on_error}: the stalled admissions left something in Redis");

        // Not locked out: requests (one at a time, within concurrent: 2) pass again.
        tokio::time::sleep(Duration::from_millis(1100)).await; // the store is skipped for 1 s after a failure
        for _ in 0..3 {
            let (status, headers, body) = body_json(send(&gateway, &chat_body(json!({}))).await).await;
            assert_eq!(status, 200, "on_error {on_error}: {body}");
            assert_eq!(headers["x-ratelimit-limit-requests"], "50");
        }
        let settled = json!({"in_flight": 0, "reserved_usd": 0.0});
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, usage) = usage_of(&gateway, "limited", Some(ADMIN)).await;
            let now = held(&usage);
            if (now["in_flight"] == settled["in_flight"] && now["reserved_usd"] == settled["reserved_usd"])
                || Instant::now() > deadline
            {
                assert_eq!(now["in_flight"], 0, "{usage}");
                let used = usage["requests"]["used"].as_u64().unwrap();
                assert!((3..=4).contains(&used), "only answered requests count: {usage}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway.shutdown().await;
    }
}

/// A client that leaves while its admission waits on a stalled Redis (`state.timeout` is
/// long here, so only the client's leaving ends the wait).
#[tokio::test]
async fn an_admission_cancelled_by_the_client_leaves_redis_as_before() {
    let Some((redis, redis_port)) = start_redis() else { return };
    let (gateway, upstream, before) = redis_gateway(redis_port, "timeout: 10s, on_error: closed").await;

    signal(&redis, "-STOP");
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    for _ in 0..3 {
        let sent = client
            .post(format!("{}/chat/completions", support::base_url(&gateway)))
            .bearer_auth(crate::limits::KEY)
            .json(&chat_body(json!({})))
            .send()
            .await;
        assert!(sent.is_err(), "the client gave up first");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&redis, "-CONT");

    let after = wait_for_usage(&gateway, &before, Duration::from_secs(10)).await;
    assert_eq!(after, before, "a cancelled admission left its reservation in Redis");
    assert_eq!(upstream.requests().len(), 1, "no cancelled request went upstream");
}
