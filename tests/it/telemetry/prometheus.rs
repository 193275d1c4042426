//! Every PromQL expression in `dashboards/*.json` returns series from a real Prometheus
//! scraping a gateway under a short mixed load.
//!
//! Needs the `prometheus` binary (`PROMETHEUS_BIN`, else on `PATH` or `/usr/bin`): absent,
//! the test fails under `CI=true` and is skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Behavior, MockUpstream, TEAM_KEY};

/// How long the queries may take to see data (scrapes are every second).
const WAIT_FOR_DATA: Duration = Duration::from_secs(30);

fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

/// Kills Prometheus when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn gateway_yaml(upstream: &MockUpstream, dead: u16) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}
backends:
  up: {{ kind: openai, base_url: {url}, api_key: sk-up, max_inflight: 64 }}
  local: {{ kind: mock, latency: 5ms, tokens_per_second: 2000 }}
  dead: {{ kind: openai, base_url: http://127.0.0.1:{dead}/v1, timeouts: {{ connect: 200ms }} }}
models:
  chat:
    targets:
      - {{ backend: up, model: upstream-chat, weight: 50, variant: control }}
      - {{ backend: local, model: mock-1, weight: 50, variant: candidate }}
    experiment: exp-1
    cache: {{ ttl: 1m }}
    price: {{ input_per_mtok: 1.0, output_per_mtok: 2.0 }}
  flaky:
    targets: [ {{ backend: dead, model: gone }} ]
keys:
  - {{ name: team, key: {team}, rate: {{ rpm: 100000 }} }}
auth: {{ mode: keys }}
experiments:
  exp-1: {{ strategy: thompson, metric: success }}
"#,
        url = upstream.url(),
        team = weir::auth::hash_key(TEAM_KEY),
    )
}

/// Every `expr` in a dashboard, with Grafana's variables replaced by values a plain query
/// accepts.
fn expressions(node: &Value, out: &mut Vec<(String, String)>, place: &str) {
    match node {
        Value::Object(map) => {
            let place = match map.get("title").and_then(Value::as_str) {
                Some(title) => format!("{place} / {title}"),
                None => place.to_owned(),
            };
            if let Some(Value::String(expr)) = map.get("expr") {
                let target = map.get("refId").and_then(Value::as_str).unwrap_or("?");
                out.push((format!("{place} [{target}]"), substitute(expr)));
            }
            for value in map.values() {
                expressions(value, out, &place);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out, place)),
        _ => {}
    }
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${model}", ".*")
        .replace("$model", ".*")
        .replace("${variant}", ".*")
        .replace("$variant", ".*")
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.push((path.file_name().unwrap().to_string_lossy().into_owned(), json));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn dashboards_are_importable_grafana_models_over_a_datasource_variable() {
    let dashboards = dashboards();
    assert!(dashboards.iter().any(|(name, _)| name == "overview.json"));
    assert!(dashboards.iter().any(|(name, _)| name == "experiments.json"));
    for (name, dashboard) in &dashboards {
        assert!(dashboard["uid"].is_string() && dashboard["title"].is_string(), "{name}");
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name}: a Prometheus data-source variable"
        );
        for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}: panel {}", panel["title"]);
            assert!(!panel["targets"].as_array().unwrap().is_empty(), "{name}: panel {}", panel["title"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let Some(binary) = prometheus_binary() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the `prometheus` binary is required under CI=true (apt-get install prometheus)");
        }
        eprintln!(
            "SKIPPED every_dashboard_query_returns_series_from_a_real_prometheus: no `prometheus` binary (install the Debian package `prometheus` or set PROMETHEUS_BIN)"
        );
        return;
    };
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&gateway_yaml(&upstream, free_port())).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: weir\n    static_configs: [ {{ targets: ['{}'] }} ]\n",
            gateway.admin_addr()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let _prometheus = Running(child);
    let api = format!("http://127.0.0.1:{port}");
    let http = support::http();
    wait_ready(&http, &api).await;

    // Mixed load until the queries have what they need: JSON and streamed chats over both
    // variants, a backend that refuses connections (502), an unknown model (404).
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(drive(support::base_url(&gateway), Arc::clone(&stop)));

    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        expressions(&dashboard, &mut queries, &file);
    }
    assert!(queries.len() >= 20, "{queries:?}");
    let deadline = tokio::time::Instant::now() + WAIT_FOR_DATA;
    let mut empty: Vec<(String, String)> = queries.clone();
    while !empty.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for (place, expr) in empty {
            if !has_series(&http, &api, &expr).await {
                still.push((place, expr));
            }
        }
        empty = still;
        if !empty.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let listing: Vec<String> = empty.iter().map(|(place, expr)| format!("  {place}: {expr}")).collect();
    assert!(empty.is_empty(), "dashboard queries without series:\n{}", listing.join("\n"));
}

async fn wait_ready(http: &reqwest::Client, api: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = http.get(format!("{api}/-/ready")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn has_series(http: &reqwest::Client, api: &str, expr: &str) -> bool {
    let Ok(response) = http.get(format!("{api}/api/v1/query")).query(&[("query", expr)]).send().await else {
        return false;
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_ne!(body["status"], "error", "query `{expr}` is invalid: {}", body["error"]);
    body["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
}

async fn drive(base: String, stop: Arc<AtomicBool>) {
    let http = support::http();
    let post = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        http.post(format!("{base}/chat/completions")).bearer_auth(TEAM_KEY).json(&body).send()
    };
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4 {
            if let Ok(response) = post("chat", json!({})).await {
                let _ = response.bytes().await;
            }
            let streamed = json!({"stream": true, "stream_options": {"include_usage": true}});
            if let Ok(response) = post("chat", streamed).await {
                let _ = response.bytes().await;
            }
        }
        if let Ok(response) = post("flaky", json!({})).await {
            let _ = response.bytes().await;
        }
        if let Ok(response) = post("unknown", json!({})).await {
            let _ = response.bytes().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
