//! Tests of the whole loader: YAML in, `Config` or positioned problems out.

use std::time::Duration;

use super::super::{AuthMode, BackendKind, Config, EMBEDDED_DEFAULT, Redaction, Sticky, load_str};

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, Vec<String>> {
    load_str(text, "w.yaml", &no_env).map_err(|e| e.problems.iter().map(ToString::to_string).collect())
}

fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected problems"),
        Err(problems) => problems,
    }
}

/// The SPEC §2 example, with its `...` placeholders made valid.
const SPEC_EXAMPLE: &str = r#"
server:
  listen: 0.0.0.0:8080                       # OpenAI-compatible API
  admin_listen: 127.0.0.1:9090               # /metrics /healthz /readyz /admin/*
  tls: { cert: certs/cert.pem, key: certs/key.pem }   # optional, rustls
  max_body: 8MiB
  admin_token: ${WEIR_ADMIN_TOKEN:-}         # bearer for /admin/*
backends:
  openai:  { kind: openai, base_url: https://api.openai.com/v1, api_key: ${OPENAI_API_KEY:-} }
  vllm:    { kind: openai, base_url: http://127.0.0.1:8000/v1, max_inflight: 256 }
  claude:  { kind: anthropic, base_url: https://api.anthropic.com, api_key: ${ANTHROPIC_API_KEY:-} }
  azure:   { kind: azure, base_url: https://NAME.openai.azure.com, api_key: xyz, api_version: 2024-10-21 }
  mock:    { kind: mock, latency: 20ms, tokens_per_second: 200 }
models:                                      # public model names clients send
  chat-default:
    targets:                                 # weighted A/B split
      - { backend: openai, model: gpt-4o-mini, weight: 90, variant: control }
      - { backend: vllm,   model: Qwen/Qwen2.5-7B-Instruct, weight: 10, variant: candidate }
    experiment: default-model-2026q4         # names the A/B experiment
    sticky: user                             # key | user | header:NAME | none
    fallbacks: [ { backend: claude, model: claude-sonnet-4-5 } ]
    retry: { attempts: 2, on: [429, 500, 502, 503, 504, connect, timeout] }
    cache: { ttl: 10m }                      # exact-match response cache
    price: { input_per_mtok: 0.15, output_per_mtok: 0.60 }   # USD
  mock: { targets: [ { backend: mock, model: mock } ] }
keys:                                        # virtual API keys
  - name: team-search
    key: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    models: [chat-default]                   # allow-list; omit = all
    rate: { rpm: 600, tpm: 200000, concurrent: 32 }
    budget: { usd: 50, per: month }
auth: { mode: keys }                         # keys | none | passthrough
cache: { max_size: 512MiB, store: memory, scope: key }
state: { store: memory }
telemetry:
  otlp: { endpoint: http://127.0.0.1:4317, protocol: grpc }  # optional
  capture_content: false                     # prompts/completions on spans
datasets:
  - { name: all, dir: data/datasets/all, sample: 1.0 }
  - { name: candidate, dir: data/datasets/candidate, filter: { variant: candidate }, redact: [email, phone, key] }
"#;

#[test]
fn embedded_default_validates() {
    let config = load_str(EMBEDDED_DEFAULT, "<embedded>", &no_env).expect("embedded default");
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.auth, AuthMode::None);
    let mock = &config.backends["mock"];
    assert_eq!(mock.kind, BackendKind::Mock);
    assert_eq!(mock.mock.latency, Duration::from_millis(20));
    assert_eq!(mock.mock.tokens_per_second, Some(200.0));
    assert_eq!(config.models["mock"].targets[0].variant, "mock");
}

#[test]
fn spec_example_validates_without_env() {
    let config = match load(SPEC_EXAMPLE) {
        Ok(config) => config,
        Err(problems) => panic!("{problems:#?}"),
    };
    assert_eq!(config.server.max_body, 8 << 20);
    assert_eq!(config.server.admin_token, None);
    assert_eq!(config.server.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.backends["openai"].api_key, None);
    assert_eq!(config.backends["openai"].base_url, "https://api.openai.com/v1");
    assert_eq!(config.backends["vllm"].max_inflight, Some(256));
    assert_eq!(config.backends["azure"].api_version.as_deref(), Some("2024-10-21"));
    let chat = &config.models["chat-default"];
    assert_eq!(chat.sticky, Sticky::User);
    assert_eq!(chat.targets[1].weight, 10);
    assert_eq!(chat.retry.attempts, 2);
    assert_eq!(chat.retry.on_status, [429, 500, 502, 503, 504]);
    assert!(chat.retry.on_connect && chat.retry.on_timeout);
    assert_eq!(chat.cache_ttl, Some(Duration::from_secs(600)));
    assert_eq!(chat.price.map(|p| p.cached_input_per_mtok), Some(0.15));
    assert_eq!(config.keys[0].hash[..2], [0x9f, 0x86]);
    assert_eq!(config.auth, AuthMode::Keys);
    let otlp = config.telemetry.otlp.as_ref().expect("otlp");
    assert_eq!((otlp.endpoint.as_str(), otlp.protocol), ("http://127.0.0.1:4317", crate::config::OtlpProtocol::Grpc));
    assert!(!config.telemetry.capture_content);
    assert_eq!(config.telemetry.sample_ratio, 1.0);
    assert_eq!(config.cache.max_size, 512 * 1024 * 1024);
    assert_eq!(config.cache.store, crate::config::CacheStore::Memory);
    assert_eq!(config.cache.scope, crate::config::CacheScope::Key);
    assert_eq!(config.datasets.len(), 2);
    assert_eq!(config.datasets[1].filter.variant.as_deref(), Some("candidate"));
    assert_eq!(config.datasets[1].redact, [Redaction::Email, Redaction::Phone, Redaction::Key]);
}

#[test]
fn reports_every_problem_with_line_and_column() {
    let text = "\
server:
  listen: 127.0.0.1:8080
  shutdown_timeout: 10x
backends:
  mock:
    kind: mock
    timeouts:
      connect: 2s
      colour: red
models:
  chat:
    targets:
      - { backend: vlm, model: m }
keys:
  - name: a
    key: sha256:ABC
";
    assert_eq!(
        problems(text),
        [
            "w.yaml:3:21: `shutdown_timeout`: invalid duration `10x`: expected a number and unit such as 250ms, 30s, 10m",
            "w.yaml:9:7: unknown key `colour` (expected one of: connect, first_byte, total, idle)",
            "w.yaml:13:20: unknown backend `vlm` (known: mock)",
            "w.yaml:16:10: invalid key hash: expected `sha256:` followed by 64 lowercase hex digits (produce it with `weir key hash`)",
        ]
    );
}

#[test]
fn type_errors_are_positioned_and_do_not_hide_others() {
    let text = "\
backends:
  b: { kind: openai, base_url: http://x, max_inflight: lots, bogus: 1 }
models:
  m: { targets: [ { backend: b, model: x, weight: -1 } ] }
auth: { mode: none }
server: { max_body: 1024, listen: nowhere }
";
    assert_eq!(
        problems(text),
        [
            "w.yaml:2:56: `backends.b.max_inflight`: expected a whole number, got string \"lots\"",
            "w.yaml:2:62: unknown key `bogus` (expected one of: kind, base_url, api_key, api_version, responses, max_inflight, timeouts, headers, ca_file, latency, tokens_per_second)",
            "w.yaml:4:51: `models.m.targets[0].weight`: expected a whole number, got integer `-1`",
            "w.yaml:6:35: `listen`: invalid address `nowhere`: expected IP:PORT such as 127.0.0.1:8080",
        ]
    );
}

#[test]
fn env_expansion_with_default_and_missing_var() {
    let env = |name: &str| (name == "TOKEN").then(|| "s3cret # not a comment".to_string());
    let text = "server: { admin_token: ${TOKEN}, max_body: \"${BODY:-1MiB}\" }\nauth: { mode: ${MODE:-none} }\n";
    let config = load_str(text, "w.yaml", &env).expect("valid");
    assert_eq!(config.server.admin_token.as_deref(), Some("s3cret # not a comment"));
    assert_eq!(config.server.max_body, 1 << 20);
    assert_eq!(config.auth, AuthMode::None);

    let err = load_str("auth: { mode: none }\nserver:\n  admin_token: ${NOPE}\n", "w.yaml", &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "w.yaml:3:16: environment variable `NOPE` is not set (write `${NOPE:-default}` to give a default)"
    );
    // A number from the environment where a number is expected.
    let env = |name: &str| (name == "N").then(|| "8".to_string());
    let text = "auth: { mode: none }\nbackends: { b: { kind: openai, base_url: 'http://h', max_inflight: '${N}' } }\n";
    assert_eq!(load_str(text, "w.yaml", &env).expect("valid").backends["b"].max_inflight, Some(8));
}

#[test]
fn yaml_syntax_error_and_duplicate_key() {
    let syntax = problems("auth: { mode: none }\nserver:\n  listen: [oops\n");
    assert_eq!(syntax.len(), 1);
    assert!(syntax[0].starts_with("w.yaml:4:1: invalid YAML"), "{syntax:?}");
    assert_eq!(
        problems("auth: { mode: none }\nserver:\n  listen: 127.0.0.1:1\n  listen: 127.0.0.1:2\n"),
        ["w.yaml:4:3: duplicate key `listen` (first on line 3)"]
    );
}

#[test]
fn reference_and_value_rules() {
    let text = "\
backends:
  a: { kind: openai }
  z: { kind: zeta, base_url: ftp://x }
  az: { kind: azure, base_url: https://h/, headers: { 'bad header': v } }
  m: { kind: mock, tokens_per_second: 0 }
  o: { kind: openai, base_url: http://h, latency: 1s, timeouts: { total: 0s } }
models:
  empty: { targets: [] }
  w: { targets: [ { backend: m, model: x, weight: 0 } ], sticky: 'header:a b', fallbacks: [ { backend: q, model: y } ] }
  v: { targets: [ { backend: m, model: x }, { backend: m, model: '' } ], retry: { attempts: 0, on: [42, connect, later] } }
keys:
  - { name: k, key: secret, models: [nope] }
  - { name: k, key: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, budget: { usd: -1, per: week } }
auth: { mode: sometimes }
";
    let got = problems(text);
    let expected = [
        "w.yaml:2:3: backend `a` needs `base_url`",
        "w.yaml:3:14: unknown backend kind `zeta` (expected one of openai, azure, anthropic, mock)",
        "w.yaml:3:30: `base_url`: invalid URL `ftp://x`",
        "w.yaml:4:3: azure backend `az` needs `api_version`",
        "w.yaml:4:55: invalid header name `bad header`",
        "w.yaml:5:39: `tokens_per_second` must be greater than 0",
        "w.yaml:6:42: `latency` only applies to `kind: mock` backends",
        "w.yaml:6:74: `timeouts.total` must be greater than 0",
        "w.yaml:8:3: model `empty` needs at least one entry in `targets`",
        "w.yaml:9:17: the weights of model `w` add up to 0",
        "w.yaml:9:66: invalid `sticky` `header:a b`",
        "w.yaml:9:104: unknown backend `q` (known: a, az, m, o, z)",
        "w.yaml:10:45: missing `model`",
        "w.yaml:10:45: variant `m` appears twice in model `v`",
        "w.yaml:10:93: `attempts` must be a whole number ≥ 1",
        "w.yaml:10:101: invalid retry condition `42`",
        "w.yaml:10:114: invalid retry condition `later`",
        "w.yaml:12:21: `key` must be the key's hash, never the key itself",
        "w.yaml:12:38: unknown model `nope` (known: empty, v, w)",
        "w.yaml:13:13: duplicate key name `k` (first on line 12)",
        "w.yaml:13:109: `usd` must be a number ≥ 0",
        "w.yaml:13:118: invalid `per` `week`: expected day or month",
        "w.yaml:14:15: invalid `auth.mode` `sometimes`",
    ];
    for (i, want) in expected.iter().enumerate() {
        assert!(
            got.get(i).is_some_and(|g| g.starts_with(want)),
            "problem {i}: want {want:?}\n got:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), expected.len(), "{}", got.join("\n"));
}

#[test]
fn keys_mode_without_keys_is_a_problem() {
    assert_eq!(
        problems("auth: { mode: keys }\n"),
        [
            "w.yaml:1:15: `auth.mode` is `keys` but no `keys` are defined, so no client could call: add a key or set `auth: { mode: none }`"
        ]
    );
    assert!(problems("server: {}\n")[0].contains("defaults to `keys`"));
}

#[test]
fn defaulted_keys_mode_is_positioned_at_auth_or_the_top() {
    // Not at the first node of the file (here `server:` on line 2).
    let got = problems("# weir\nserver: { listen: 127.0.0.1:1 }\n");
    assert!(got[0].starts_with("w.yaml:1:1: `auth.mode` defaults to `keys`"), "{got:?}");
    let got = problems("server: {}\nauth: {}\n");
    assert!(got[0].starts_with("w.yaml:2:1: `auth.mode` defaults to `keys`"), "{got:?}");
    let got = problems("server: {}\nauth:\n");
    assert!(got[0].starts_with("w.yaml:2:1: `auth.mode` defaults to `keys`"), "{got:?}");
}

#[test]
fn unknown_key_lists_the_keys_expected_there() {
    let text = "\
auth: { mode: none }
server:
  lisen: 127.0.0.1:8080
modles: {}
backends:
  b: { kind: mock, headers: { x-any: fine } }
models:
  m: { targets: [ { backend: b, model: x, wieght: 2 } ] }
";
    assert_eq!(
        problems(text),
        [
            "w.yaml:3:3: unknown key `lisen` (expected one of: listen, admin_listen, tls, max_body, admin_token, shutdown_timeout)",
            "w.yaml:4:1: unknown key `modles` (expected one of: server, backends, models, keys, auth, cache, state, telemetry, datasets, experiments)",
            "w.yaml:8:43: unknown key `wieght` (expected one of: backend, model, weight, variant, params)",
        ]
    );
}

/// The schema walk reaches the last section of `RawConfig`, so it did not stop part-way.
#[test]
fn schema_covers_the_last_section() {
    let got = problems("auth: { mode: none }\ndatasets:\n  - { name: d, dir: x, filter: { modle: m } }\n");
    assert_eq!(got, ["w.yaml:3:34: unknown key `modle` (expected one of: model, variant, key, status)"]);
}

#[test]
fn schema_covers_the_experiments_section() {
    let got = problems("auth: { mode: none }\nexperiments:\n  e: { stop: { confidnce: 0.9 } }\n");
    assert!(
        got.contains(
            &"w.yaml:3:16: unknown key `confidnce` (expected one of: confidence, min_samples, promote, margin)"
                .to_owned()
        ),
        "{got:?}"
    );
}

#[test]
fn empty_sections_are_allowed() {
    let config = load("server:\nbackends:\nmodels:\nkeys:\nauth: { mode: passthrough }\n").expect("valid");
    assert!(config.backends.is_empty() && config.keys.is_empty());
    assert_eq!(config.auth, AuthMode::Passthrough);
}

#[test]
fn dataset_mistakes_are_positioned() {
    let text = "\
auth: { mode: none }
datasets:
  - { name: a, dir: d, sample: 2, redact: [email, '(unclosed'], filter: { status: [200, 7xx] } }
  - { name: a, dir: d, max_file_size: 0 }
";
    let got = problems(text);
    let expected = [
        "w.yaml:3:32: `sample` must be between 0 and 1",
        "w.yaml:3:51: `redact`: `(unclosed` is not email, phone, key or a valid regex",
        "w.yaml:3:83: `status` must be HTTP statuses",
        "w.yaml:4:13: duplicate dataset name `a`",
        "w.yaml:4:21: `dir` is already used by dataset `a`",
        "w.yaml:4:39: `max_file_size` must be greater than 0",
    ];
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (got, expected) in got.iter().zip(expected) {
        assert!(got.starts_with(expected), "{got:?} does not start with {expected:?}");
    }
}

#[test]
fn dataset_defaults_and_status_classes() {
    let text = "auth: { mode: none }\ndatasets:\n  - { name: a, dir: d, filter: { status: [200, 5xx] }, redact: ['acct-\\d+'] }\n";
    let config = load(text).expect("valid");
    let d = &config.datasets[0];
    assert_eq!(d.sample, 1.0);
    assert_eq!(d.max_file_size, 100 << 20);
    assert_eq!(d.filter.status, [super::super::StatusMatch::Code(200), super::super::StatusMatch::Class(5)]);
    assert_eq!(d.redact, [Redaction::Regex("acct-\\d+".into())]);
}
