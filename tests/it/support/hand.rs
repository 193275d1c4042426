//! The standard fixture built as a `Config` value, for embedding weir as a library without a
//! YAML file (and as a cross-check that the YAML loader builds the same thing).

use std::collections::BTreeMap;
use std::time::Duration;

use weir::config::{
    AuthMode, BackendConfig, BackendKind, Config, KeyConfig, MockSettings, ModelConfig, RateConfig, RetryConfig,
    ServerConfig, Sticky, TargetConfig, Timeouts as BackendTimeouts,
};

use super::{ALL_KEY, TEAM_KEY, Timeouts, UPSTREAM_KEY};

fn duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().expect("duration number");
    match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        other => panic!("unit {other} not handled in tests"),
    }
}

fn sha256(key: &str) -> [u8; 32] {
    let hex = weir::auth::hash_key(key);
    let hex = hex.strip_prefix("sha256:").expect("sha256 prefix");
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn model(name: &str, backend: &str, upstream: &str) -> (String, ModelConfig) {
    let config = ModelConfig {
        name: name.into(),
        targets: vec![TargetConfig {
            backend: backend.into(),
            model: upstream.into(),
            weight: 1,
            variant: backend.into(),
            params: Default::default(),
        }],
        experiment: None,
        sticky: Sticky::None,
        fallbacks: Vec::new(),
        retry: RetryConfig::default(),
        cache_ttl: None,
        price: None,
    };
    (name.into(), config)
}

/// The same gateway as [`super::standard_yaml`], without YAML.
pub fn standard_config(upstream_url: &str, timeouts: Timeouts) -> Config {
    let up = BackendConfig {
        name: "up".into(),
        kind: BackendKind::OpenAi,
        base_url: upstream_url.trim_end_matches('/').into(),
        api_key: Some(UPSTREAM_KEY.into()),
        api_version: None,
        responses_native: false,
        max_inflight: None,
        timeouts: BackendTimeouts {
            connect: duration(timeouts.connect),
            first_byte: duration(timeouts.first_byte),
            total: duration(timeouts.total),
            idle: duration(timeouts.idle),
        },
        headers: Vec::new(),
        ca_file: None,
        mock: MockSettings::default(),
    };
    let mock = BackendConfig {
        name: "mock".into(),
        kind: BackendKind::Mock,
        base_url: String::new(),
        api_key: None,
        api_version: None,
        responses_native: false,
        max_inflight: None,
        timeouts: BackendTimeouts::default(),
        headers: Vec::new(),
        ca_file: None,
        mock: MockSettings { latency: Duration::from_millis(1), tokens_per_second: None },
    };
    let key = |name: &str, secret: &str, models: Option<Vec<String>>| KeyConfig {
        name: name.into(),
        hash: sha256(secret),
        models,
        rate: RateConfig::default(),
        budget: None,
    };
    Config {
        server: ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            tls: None,
            max_body: 64 * 1024,
            admin_token: None,
            shutdown_timeout: Duration::from_secs(5),
        },
        backends: BTreeMap::from([("up".into(), up), ("mock".into(), mock)]),
        models: BTreeMap::from([
            model("chat", "up", "upstream-chat"),
            model("embed", "up", "upstream-embed"),
            model("local", "mock", "mock-1"),
        ]),
        keys: vec![key("team", TEAM_KEY, Some(vec!["chat".into()])), key("all", ALL_KEY, None)],
        auth: AuthMode::Keys,
        telemetry: Default::default(),
        cache: weir::config::CacheConfig::default(),
        state: weir::config::StateConfig::default(),
        datasets: Vec::new(),
        experiments: BTreeMap::new(),
    }
}
