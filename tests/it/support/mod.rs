//! Shared test harness: gateways started from YAML, a programmable mock upstream, and
//! clients (async-openai for the SDK's view, reqwest for headers, statuses and raw SSE).

pub mod client;
pub mod hand;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Once;
use std::time::Duration;

use weir::Gateway;
use weir::config::Config;

pub use client::{body_json, http, http_h2c, openai, read_sse, sse_events};
pub use upstream::{Behavior, MockUpstream};

/// The client key with an allow-list of `[chat]`.
pub const TEAM_KEY: &str = "sk-team-0123456789";
/// The client key allowed every model.
pub const ALL_KEY: &str = "sk-all-0123456789";
/// The backend's own credential, which must replace the client's upstream.
pub const UPSTREAM_KEY: &str = "sk-upstream-secret";

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Installs the rustls provider once per process; call first in every test.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(weir::install_crypto_provider);
}

/// Parses and validates `yaml` as a user's config file; `${VAR}` resolve from `env`.
pub fn config_with_env(yaml: &str, env: &[(&str, &str)]) -> Config {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    match weir::config::load_str(yaml, "<test>", &|name| env.get(name).cloned()) {
        Ok(config) => config,
        Err(err) => panic!("test config is invalid:\n{err}\n--- config ---\n{yaml}"),
    }
}

pub fn config(yaml: &str) -> Config {
    config_with_env(yaml, &[])
}

/// Starts a gateway on free ports from `yaml`.
pub async fn start(yaml: &str) -> Gateway {
    init();
    start_config(config(yaml)).await
}

pub async fn start_config(config: Config) -> Gateway {
    init();
    Gateway::start(config).await.expect("gateway starts")
}

/// `http://ADDR/v1` of a gateway's client port.
pub fn base_url(gateway: &Gateway) -> String {
    format!("http://{}/v1", gateway.addr())
}

/// Timeouts for one backend, as the YAML flow map `timeouts:` takes.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: &'static str,
    pub first_byte: &'static str,
    pub total: &'static str,
    pub idle: &'static str,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: "1s", first_byte: "2s", total: "20s", idle: "2s" }
    }
}

/// The config most tests use: one `openai` backend `up` at `upstream_url`, public models
/// `chat` (upstream name `upstream-chat`) and `embed` (`upstream-embed`), two keys
/// (`TEAM_KEY` may use `chat` only, `ALL_KEY` everything), `auth: keys`, `max_body: 64KiB`.
pub fn standard_yaml(upstream_url: &str, timeouts: Timeouts) -> String {
    let Timeouts { connect, first_byte, total, idle } = timeouts;
    format!(
        r#"# weir integration test: standard fixture
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  max_body: 64KiB
  shutdown_timeout: 5s
backends:
  up:
    kind: openai
    base_url: {upstream_url}
    api_key: {UPSTREAM_KEY}
    timeouts: {{ connect: {connect}, first_byte: {first_byte}, total: {total}, idle: {idle} }}
  mock: {{ kind: mock, latency: 1ms }}
models:
  chat:
    targets: [ {{ backend: up, model: upstream-chat }} ]
  embed:
    targets: [ {{ backend: up, model: upstream-embed }} ]
  local:
    targets: [ {{ backend: mock, model: mock-1 }} ]
keys:
  - name: team
    key: {team}
    models: [chat]
  - name: all
    key: {all}
auth: {{ mode: keys }}
"#,
        team = weir::auth::hash_key(TEAM_KEY),
        all = weir::auth::hash_key(ALL_KEY),
    )
}

/// A gateway with the standard fixture in front of `upstream`.
pub async fn standard(upstream: &MockUpstream) -> Gateway {
    standard_with(upstream, Timeouts::default()).await
}

pub async fn standard_with(upstream: &MockUpstream, timeouts: Timeouts) -> Gateway {
    standard_at(&upstream.url(), timeouts).await
}

/// The standard fixture with backend `up` at any URL.
pub async fn standard_at(upstream_url: &str, timeouts: Timeouts) -> Gateway {
    start(&standard_yaml(upstream_url, timeouts)).await
}

/// Polls `check` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
