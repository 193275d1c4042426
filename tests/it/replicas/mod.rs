//! Replicas on one machine: three `weir serve` processes sharing a real `redis-server`,
//! behind a real nginx, reading one ConfigMap-style config directory, under concurrent load.
//! Shared limits and budgets, a shared cache, config changes reaching every replica, a
//! rolling restart and a Redis outage, each as a deployment would see them.
//!
//! The servers are real: a missing `redis-server` or `nginx` skips these tests with a message,
//! and fails them under `CI=true`. One cluster runs at a time (they share two cores).

mod cluster;
mod load;

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::support::{Behavior, MockUpstream};
use cluster::{ADMIN_TOKEN, Cluster, START_DEADLINE};
use load::{Steady, burst, chat_body};

const RPM_KEY: &str = "sk-replicas-rpm-0123456789";
const BUDGET_KEY: &str = "sk-replicas-budget-0123456789";
const STEADY_KEY: &str = "sk-replicas-steady-0123456789";
const PROBE_KEY: &str = "sk-replicas-probe-0123456789";

/// The `rpm` of key `rpm`, and the GCRA's refill interval that follows from it.
const RPM: usize = 300;
const RPM_INTERVAL: Duration = Duration::from_millis(60_000 / RPM as u64);
/// `budget.usd` of key `budget`; each request costs exactly `max_tokens` (4) × $1.
const BUDGET_USD: usize = 800;
const COST_USD: usize = 4;
/// The `rpm` of key `probe`, used to see that limits are shared again after an outage.
const PROBE_RPM: usize = 30;

/// One cluster at a time: several at once would only measure the two cores' contention.
static ONE_CLUSTER: Mutex<()> = Mutex::const_new(());

/// The replicas' config: ports and admin token from each process's environment, a shared
/// upstream, limits and budgets and the response cache on Redis (fail open).
fn yaml(upstream: &str, redis: &str, extra_model: &str) -> String {
    let hash = weir::auth::hash_key;
    format!(
        r#"# weir replicas test: every replica reads this one file
server:
  listen: ${{WEIR_LISTEN}}
  admin_listen: ${{WEIR_ADMIN_LISTEN}}
  admin_token: ${{WEIR_ADMIN_TOKEN}}
  shutdown_timeout: {shutdown}s
backends:
  up:
    kind: openai
    base_url: {upstream}
    api_key: sk-upstream
    timeouts: {{ connect: 2s, first_byte: 20s, total: 60s, idle: 20s }}
models:
  chat:
    targets: [ {{ backend: up, model: upstream-chat }} ]
    price: {{ input_per_mtok: 0, output_per_mtok: 1000000 }}
  cached:
    targets: [ {{ backend: up, model: upstream-cached }} ]
    cache: {{ ttl: 10m }}
{extra_model}keys:
  - {{ name: rpm, key: {rpm_key}, rate: {{ rpm: {RPM} }} }}
  - {{ name: budget, key: {budget_key}, budget: {{ usd: {BUDGET_USD}, per: month }} }}
  - {{ name: steady, key: {steady_key}, rate: {{ rpm: 1000000 }} }}
  - {{ name: probe, key: {probe_key}, rate: {{ rpm: {PROBE_RPM} }} }}
auth: {{ mode: keys }}
state: {{ store: "{redis}", on_error: open, timeout: 1s }}
cache: {{ store: "{redis}", scope: global }}
"#,
        shutdown = cluster::SHUTDOWN_TIMEOUT.as_secs(),
        rpm_key = hash(RPM_KEY),
        budget_key = hash(BUDGET_KEY),
        steady_key = hash(STEADY_KEY),
        probe_key = hash(PROBE_KEY),
    )
}

/// A cluster in front of `upstream`, or `None` when a server binary is missing outside CI.
fn cluster(upstream: &MockUpstream) -> Option<Cluster> {
    let url = upstream.url();
    Cluster::start(|redis| yaml(&url, redis, ""))
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

async fn get_json(url: &str) -> Value {
    let response = load::client().get(url).bearer_auth(ADMIN_TOKEN).send().await.expect("GET reaches the replica");
    response.json().await.expect("JSON answer")
}

/// `weir_state_store_errors_total{outcome="fallback"}` of one replica.
async fn fallback_count(metrics_url: &str) -> u64 {
    let text = load::client().get(metrics_url).send().await.expect("metrics").text().await.expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(r#"weir_state_store_errors_total{outcome="fallback"} "#))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_an_rpm_limit_and_a_usd_budget() {
    let _one = ONE_CLUSTER.lock().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let Some(cluster) = cluster(&upstream) else { return };
    let lb = cluster.nginx.url();

    let body = chat_body("chat", "how many of us get through", false);
    let (statuses, elapsed) = burst(&lb, RPM_KEY, &body, 2 * RPM, 48).await;
    let admitted = count(&statuses, 200);
    assert_eq!(admitted + count(&statuses, 429), statuses.len(), "only 200 or 429: {statuses:?}\n{}", cluster.logs());
    // The GCRA gives one request back every interval while the burst lasts.
    let refilled = (elapsed.as_millis() / RPM_INTERVAL.as_millis()) as usize + 1;
    eprintln!(
        "rpm {RPM} across 3 replicas: {admitted} of {} admitted in {elapsed:?} \
         (limit {RPM} + at most {refilled} refilled: {:+.2}% over the limit)",
        statuses.len(),
        (admitted as f64 - RPM as f64) * 100.0 / RPM as f64
    );
    assert!(
        (RPM..=RPM + refilled).contains(&admitted),
        "rpm {RPM}: {admitted} admitted in {elapsed:?}\n{}",
        cluster.logs()
    );

    let allowed = BUDGET_USD / COST_USD;
    let (statuses, elapsed) = burst(&lb, BUDGET_KEY, &body, 2 * allowed, 48).await;
    let admitted = count(&statuses, 200);
    assert_eq!(admitted + count(&statuses, 429), statuses.len(), "only 200 or 429: {statuses:?}");
    eprintln!(
        "budget ${BUDGET_USD} at ${COST_USD} a request across 3 replicas: {admitted} of {} admitted in {elapsed:?} \
         (limit {allowed})",
        statuses.len()
    );
    // Reservations are exact here (the estimate is the real cost), so exactly the budget.
    assert_eq!(admitted, allowed, "budget ${BUDGET_USD}\n{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_and_a_config_change_reach_every_replica() {
    let _one = ONE_CLUSTER.lock().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let Some(cluster) = cluster(&upstream) else { return };
    let client = load::client();
    let body = chat_body("cached", "one answer for every replica", false);
    let ask = |replica: usize| {
        let request = client
            .post(format!("http://{}/v1/chat/completions", cluster.replicas[replica].addr))
            .bearer_auth(STEADY_KEY)
            .json(&body);
        async move {
            let response = request.send().await.expect("request reaches the replica");
            let cache = response.headers().get("x-weir-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            (response.status(), cache, response.text().await.expect("body"))
        }
    };

    let (status, cache, first) = ask(0).await;
    assert_eq!((status.as_u16(), cache.as_str()), (200, "miss"), "{first}");
    // The fill runs off the request: wait until Redis holds it before asking the others.
    let deadline = Instant::now() + START_DEADLINE;
    while cluster.redis.keys("weir:cache:v1:*").is_empty() {
        assert!(Instant::now() < deadline, "the entry never reached Redis\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for replica in [1, 2] {
        let (status, cache, answer) = ask(replica).await;
        assert_eq!((status.as_u16(), cache.as_str()), (200, "hit"), "replica {replica}: {answer}");
        assert_eq!(answer, first, "replica {replica} serves the stored answer byte for byte");
    }
    let upstream_calls = upstream.requests().iter().filter(|r| r.json()["model"] == "upstream-cached").count();
    assert_eq!(upstream_calls, 1, "one upstream call for three replicas");

    // A config change written once, as the kubelet writes a ConfigMap, reaches all three.
    let new_yaml = yaml(
        &upstream.url(),
        &cluster.redis.url(),
        "  added:\n    targets: [ { backend: up, model: upstream-added } ]\n",
    );
    let new_hash = format!("sha256:{}", hex::encode(Sha256::digest(new_yaml.as_bytes())));
    let written = Instant::now();
    cluster.config.write(&new_yaml);
    let mut applied = Vec::new();
    for replica in &cluster.replicas {
        let url = format!("http://{}/admin/config", replica.admin);
        loop {
            if get_json(&url).await["hash"] == new_hash.as_str() {
                applied.push(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < START_DEADLINE,
                "{} never applied the change\n{}",
                replica.name,
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("config change applied by the three replicas after {applied:?}");
    let slowest = applied.iter().max().copied().unwrap_or_default();
    assert!(slowest <= Duration::from_secs(2), "config change took {slowest:?} to reach every replica");
    for replica in &cluster.replicas {
        let models = client
            .get(format!("http://{}/v1/models", replica.addr))
            .bearer_auth(STEADY_KEY)
            .send()
            .await
            .expect("models")
            .text()
            .await
            .expect("models body");
        assert!(models.contains("\"added\""), "{}: {models}", replica.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_request() {
    let _one = ONE_CLUSTER.lock().await;
    // Streams last about half a second, so some are in flight on a replica when it gets SIGTERM
    // and must finish during its drain.
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(80))).await;
    let Some(mut cluster) = cluster(&upstream) else { return };
    let steady = Steady::start(&cluster.nginx.url(), STEADY_KEY, 12);
    tokio::time::sleep(Duration::from_secs(1)).await;

    for i in 0..cluster.replicas.len() {
        // As Kubernetes does: the pod leaves the Service's endpoints, then gets SIGTERM
        // (the preStop pause covers the propagation), drains, and comes back when ready.
        cluster.nginx.route(&cluster.replicas, Some(i));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let started = Instant::now();
        let status = cluster.replicas[i].terminate();
        assert!(status.success(), "{} exited with {status}\n{}", cluster.replicas[i].name, cluster.logs());
        eprintln!("{} drained and exited in {:?}", cluster.replicas[i].name, started.elapsed());
        cluster.replicas[i].start();
        let readyz = format!("http://{}/readyz", cluster.replicas[i].admin);
        let deadline = Instant::now() + START_DEADLINE;
        while !load::client().get(&readyz).send().await.is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "{} never became ready", cluster.replicas[i].name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.nginx.route(&cluster.replicas, None);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let tally = steady.finish().await;
    assert!(
        tally.failures.is_empty(),
        "failed requests during the rolling restart: {:#?}\n{}",
        tally.failures,
        cluster.logs()
    );
    assert!(tally.ok >= 50 && tally.streams >= 20, "the load was too thin to show anything: {tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_load_fails_open_and_recovers_without_a_restart() {
    let _one = ONE_CLUSTER.lock().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let Some(mut cluster) = cluster(&upstream) else { return };
    let steady = Steady::start(&cluster.nginx.url(), STEADY_KEY, 6);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.redis.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.redis.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = steady.finish().await;
    assert!(tally.failures.is_empty(), "requests failed during the outage: {:#?}\n{}", tally.failures, cluster.logs());
    assert!(tally.ok >= 50, "the load was too thin to show anything: {tally:?}");
    let mut fell_back = 0;
    for replica in &cluster.replicas {
        fell_back += fallback_count(&format!("http://{}/metrics", replica.admin)).await;
    }
    eprintln!("requests admitted on local counters while Redis was down: {fell_back}");
    assert!(fell_back > 0, "the outage was never noticed: nothing fell back to local counters");

    // Limits: each replica reads the shared windows again (the store is retried a second
    // after a failure) ...
    for replica in &cluster.replicas {
        let url = format!("http://{}/admin/keys/probe/usage", replica.admin);
        let deadline = Instant::now() + START_DEADLINE;
        while get_json(&url).await["store"] != "redis" {
            assert!(Instant::now() < deadline, "{} never used Redis again\n{}", replica.name, cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // ... so together they admit one key's rpm, not three times it.
    let body = chat_body("chat", "are the limits shared again", false);
    let mut statuses = Vec::new();
    let started = Instant::now();
    for round in 0..2 * PROBE_RPM {
        let replica = &cluster.replicas[round % 3];
        let url = format!("http://{}/v1", replica.addr);
        statuses.extend(burst(&url, PROBE_KEY, &body, 1, 1).await.0);
    }
    let admitted = count(&statuses, 200);
    let refilled = (started.elapsed().as_millis() / (60_000 / PROBE_RPM as u128)) as usize + 1;
    eprintln!("after the outage: rpm {PROBE_RPM} across 3 replicas admitted {admitted} of {}", statuses.len());
    assert!((PROBE_RPM..=PROBE_RPM + refilled).contains(&admitted), "{statuses:?}\n{}", cluster.logs());

    // Cache: an entry written through one replica is a hit on another again.
    let client = load::client();
    let deadline = Instant::now() + START_DEADLINE;
    for attempt in 0.. {
        assert!(Instant::now() < deadline, "the shared cache never recovered\n{}", cluster.logs());
        let body = chat_body("cached", &format!("after the outage, attempt {attempt}"), false);
        let before = cluster.redis.keys("weir:cache:v1:*").len();
        let send = |replica: usize| {
            client
                .post(format!("http://{}/v1/chat/completions", cluster.replicas[replica].addr))
                .bearer_auth(STEADY_KEY)
                .json(&body)
                .send()
        };
        assert_eq!(send(0).await.expect("request").status(), 200);
        let filled = Instant::now() + Duration::from_secs(2);
        while cluster.redis.keys("weir:cache:v1:*").len() == before && Instant::now() < filled {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if cluster.redis.keys("weir:cache:v1:*").len() == before {
            continue; // that replica's cache connection was still coming back
        }
        let response = send(1).await.expect("request");
        assert_eq!(response.headers().get("x-weir-cache").and_then(|v| v.to_str().ok()), Some("hit"));
        eprintln!("shared cache recovered after {attempt} failed attempts");
        break;
    }
}
