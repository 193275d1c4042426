//! Config hot reload: file edits, `POST /admin/reload`, `SIGHUP`, `/admin/config`,
//! certificate rotation, a moved listener, and a soak of reloads under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weir::Gateway;
use weir::config::ConfigSource;

use crate::cli::{ServeGuard, free_port};
use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY, Timeouts, UPSTREAM_KEY};

const ADMIN_TOKEN: &str = "admin-token-for-tests";

/// A gateway started from a file on disk, as `weir serve --config` does.
struct FileGateway {
    gateway: Gateway,
    path: PathBuf,
    dir: tempfile::TempDir,
}

async fn start_file(yaml: &str) -> FileGateway {
    support::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let source = ConfigSource::File(path.clone());
    let loaded = source.load().unwrap_or_else(|err| panic!("test config is invalid:\n{err}"));
    let gateway = Gateway::start_from(source, loaded).await.expect("gateway starts");
    FileGateway { gateway, path, dir }
}

/// Replaces the file the way editors save: write a temporary file, rename it over the config.
fn rewrite(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the config");
}

/// The standard fixture with an admin token.
fn standard_with_admin(upstream: &MockUpstream) -> String {
    with_admin(&support::standard_yaml(&upstream.url(), Timeouts::default()))
}

fn with_admin(yaml: &str) -> String {
    yaml.replacen("server:\n", &format!("server:\n  admin_token: {ADMIN_TOKEN}\n"), 1)
}

fn chat_body(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"tell me a story"}}]}}"#)
}

async fn chat(gateway: &Gateway, model: &str) -> (StatusCode, http::HeaderMap, Value) {
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(ALL_KEY)
        .header("content-type", "application/json")
        .body(chat_body(model, false))
        .send()
        .await
        .expect("request reaches the gateway");
    support::body_json(response).await
}

async fn admin(gateway: &Gateway, method: http::Method, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = support::http().request(method, format!("http://{}{path}", gateway.admin_addr()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let (status, _, body) = support::body_json(request.send().await.expect("admin request")).await;
    (status, body)
}

async fn admin_reload(gateway: &Gateway) -> (StatusCode, Value) {
    admin(gateway, http::Method::POST, "/admin/reload", Some(ADMIN_TOKEN)).await
}

async fn admin_config(gateway: &Gateway) -> Value {
    let (status, body) = admin(gateway, http::Method::GET, "/admin/config", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `weir_config_reloads_total{outcome}` as the admin port's `/metrics` shows it.
async fn reloads_counted(gateway: &Gateway, outcome: &str) -> f64 {
    let url = format!("http://{}/metrics", gateway.admin_addr());
    let text = support::http().get(url).send().await.expect("metrics").text().await.expect("metrics body");
    let series = format!("weir_config_reloads_total{{outcome=\"{outcome}\"}} ");
    let line = text.lines().find_map(|line| line.strip_prefix(&series));
    line.unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}")).trim().parse().expect("a number")
}

fn file_hash(path: &Path) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(path).expect("read config"))))
}

#[tokio::test]
async fn a_model_added_to_the_file_is_served_within_two_seconds() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream);
    let fg = start_file(&yaml).await;
    let (status, _, body) = chat(&fg.gateway, "added").await;
    assert_eq!(status, 404, "{body}");
    let before = admin_config(&fg.gateway).await;

    rewrite(
        &fg.path,
        &yaml.replace("models:\n", "models:\n  added:\n    targets: [ { backend: mock, model: mock-added } ]\n"),
    );
    let written = Instant::now();
    loop {
        let (status, headers, body) = chat(&fg.gateway, "added").await;
        if status == 200 {
            assert_eq!(headers.get("x-weir-backend").expect("backend header"), "mock");
            break;
        }
        assert_eq!(status, 404, "{body}");
        assert!(written.elapsed() < Duration::from_secs(2), "the new model was not served within 2 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = admin_config(&fg.gateway).await;
    assert_eq!(after["hash"], file_hash(&fg.path));
    assert_ne!(after["hash"], before["hash"]);
    assert!(after["config"]["models"]["added"].is_object(), "{after}");
    // The old models are still there.
    let (status, _, body) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{body}");
    fg.gateway.shutdown().await;
}

#[tokio::test]
async fn a_stream_started_before_a_reload_completes_intact() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(40))).await;
    let yaml = standard_with_admin(&upstream);
    let fg = start_file(&yaml).await;
    let (status, _, whole) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{whole}");

    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&fg.gateway)))
        .bearer_auth(ALL_KEY)
        .header("content-type", "application/json")
        .body(chat_body("chat", true))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-weir-backend").expect("backend header"), "up");
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(support::DEADLINE, body.next()).await.expect("first chunk in time");
    let mut text = String::from_utf8(first.expect("a chunk").expect("chunk reads").to_vec()).expect("UTF-8");

    // `chat` now goes to the mock backend; the stream in flight stays on `up`.
    rewrite(&fg.path, &yaml.replace("backend: up, model: upstream-chat", "backend: mock, model: mock-chat"));
    let (status, outcome) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 200, "{outcome}");
    let (status, headers, body_after) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{body_after}");
    assert_eq!(headers.get("x-weir-backend").expect("backend header"), "mock", "new requests use the new config");

    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, body.next()).await.expect("stream goes on") {
        text.push_str(std::str::from_utf8(&chunk.expect("chunk reads")).expect("UTF-8"));
    }
    let events = support::sse_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).expect("chunk is JSON"))
        .inspect(|chunk| assert!(chunk.get("error").is_none(), "{chunk}"))
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, whole["choices"][0]["message"]["content"].as_str().expect("content"));
    assert!(upstream.completed() >= 1, "the upstream finished its stream");
    fg.gateway.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as `weir.yaml -> ..data/weir.yaml`, `..data -> ..TIMESTAMP`,
/// and updates it by pointing `..data` at a new directory: the file itself is never written.
#[tokio::test]
async fn a_kubernetes_configmap_swap_is_followed() {
    use std::os::unix::fs::symlink;

    support::init();
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream);
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path();
    std::fs::create_dir(mount.join("..2026_11_28_v1")).expect("mkdir");
    std::fs::write(mount.join("..2026_11_28_v1/weir.yaml"), &yaml).expect("write");
    symlink("..2026_11_28_v1", mount.join("..data")).expect("symlink ..data");
    symlink("..data/weir.yaml", mount.join("weir.yaml")).expect("symlink weir.yaml");
    let source = ConfigSource::File(mount.join("weir.yaml"));
    let loaded = source.load().expect("valid config");
    let gateway = Gateway::start_from(source, loaded).await.expect("gateway starts");

    let updated = yaml.replace("models:\n", "models:\n  added:\n    targets: [ { backend: mock, model: m } ]\n");
    std::fs::create_dir(mount.join("..2026_11_28_v2")).expect("mkdir");
    std::fs::write(mount.join("..2026_11_28_v2/weir.yaml"), updated).expect("write");
    symlink("..2026_11_28_v2", mount.join("..data_tmp")).expect("symlink");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap ..data");

    let deadline = Instant::now() + support::DEADLINE;
    while chat(&gateway, "added").await.0 != 200 {
        assert!(Instant::now() < deadline, "the swapped ConfigMap was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_broken_file_is_rejected_with_its_places_and_the_old_config_keeps_serving() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream);
    let fg = start_file(&yaml).await;
    let hash = file_hash(&fg.path);

    let broken = yaml
        .replace("backend: up, model: upstream-chat", "backend: nowhere, model: upstream-chat")
        .replace("  max_body: 64KiB\n", "  max_body: 64KiB\n  colour: red\n");
    rewrite(&fg.path, &broken);
    let (status, body) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["outcome"], "rejected");
    assert_eq!(body["error"]["code"], "invalid_config");
    let errors: Vec<&str> = body["errors"].as_array().expect("errors").iter().filter_map(Value::as_str).collect();
    assert_eq!(errors.len(), 2, "{body}");
    let origin = format!("{}:", fg.path.display());
    for error in &errors {
        let place = error.strip_prefix(&origin).unwrap_or_else(|| panic!("not placed in the file: {error}"));
        let mut parts = place.splitn(3, ':');
        let (line, col) = (parts.next().expect("line"), parts.next().expect("col"));
        assert!(line.parse::<usize>().is_ok() && col.parse::<usize>().is_ok(), "PATH:LINE:COL expected: {error}");
    }
    assert!(errors.iter().any(|e| e.contains("colour")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("nowhere")), "{errors:?}");
    // The file watcher may have seen the broken write too: one or two failures.
    assert!(reloads_counted(&fg.gateway, "failure").await >= 1.0);
    assert_eq!(reloads_counted(&fg.gateway, "success").await, 0.0);

    let (status, headers, body) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-weir-backend").expect("backend header"), "up");
    assert_eq!(admin_config(&fg.gateway).await["hash"], hash, "the old config stays active");

    // Fixed again: the next reload applies.
    rewrite(&fg.path, &yaml.replace("  max_body: 64KiB\n", "  max_body: 32KiB\n"));
    let (status, body) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 200, "{body}");
    assert!(["applied", "unchanged"].contains(&body["outcome"].as_str().expect("outcome")), "{body}");
    assert_eq!(admin_config(&fg.gateway).await["hash"], file_hash(&fg.path));
    assert!(reloads_counted(&fg.gateway, "success").await >= 1.0);
    fg.gateway.shutdown().await;
}

#[tokio::test]
async fn admin_reload_needs_the_admin_token() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let fg = start_file(&standard_with_admin(&upstream)).await;
    let gateway = &fg.gateway;
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = admin(gateway, http::Method::POST, "/admin/reload", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_admin_token");
        let (status, _) = admin(gateway, http::Method::GET, "/admin/config", token).await;
        assert_eq!(status, 401);
    }
    let (status, body) = admin_reload(gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "unchanged", "the file did not change");
    assert_eq!(body["hash"], file_hash(&fg.path));
    let (status, _) = admin(gateway, http::Method::GET, "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 405);
    fg.gateway.shutdown().await;

    // No admin token configured: nobody gets in, whatever they send.
    let fg = start_file(&support::standard_yaml(&upstream.url(), Timeouts::default())).await;
    for token in [None, Some(""), Some(ADMIN_TOKEN)] {
        let (status, _) = admin(&fg.gateway, http::Method::POST, "/admin/reload", token).await;
        assert_eq!(status, 401, "{token:?}");
    }
    fg.gateway.shutdown().await;

    // A config built in code has no file to read again.
    let gateway = support::start(&standard_with_admin(&upstream)).await;
    let (status, body) = admin_reload(&gateway).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "reload_unavailable");
    gateway.shutdown().await;
}

#[tokio::test]
async fn admin_config_shows_the_active_config_with_secrets_masked() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream).replace(
        &format!("    api_key: {UPSTREAM_KEY}\n"),
        &format!("    api_key: {UPSTREAM_KEY}\n    headers: {{ x-api-key: header-secret, x-served-by: weir }}\n"),
    );
    let fg = start_file(&yaml).await;
    let started = std::time::SystemTime::now();
    let view = admin_config(&fg.gateway).await;
    let text = view.to_string();
    let team_hash = weir::auth::hash_key(TEAM_KEY);
    for secret in [UPSTREAM_KEY, ADMIN_TOKEN, "header-secret", team_hash.trim_start_matches("sha256:")] {
        assert!(!text.contains(secret), "{secret} leaks in {text}");
    }
    let config = &view["config"];
    assert_eq!(config["server"]["admin_token"], "****");
    assert_eq!(config["backends"]["up"]["api_key"], "****");
    assert_eq!(config["backends"]["up"]["headers"]["x-api-key"], "****");
    assert_eq!(config["backends"]["up"]["headers"]["x-served-by"], "weir");
    assert_eq!(config["backends"]["up"]["base_url"], upstream.url());
    assert_eq!(config["keys"][0]["name"], "team");
    assert_eq!(config["keys"][0]["key"], "****");
    assert_eq!(config["auth"]["mode"], "keys");
    assert_eq!(view["hash"], file_hash(&fg.path));
    assert_eq!(view["source"], fg.path.display().to_string());
    let loaded_at = humantime::parse_rfc3339(view["loaded_at"].as_str().expect("loaded_at")).expect("RFC 3339");
    assert!(loaded_at <= started + Duration::from_secs(1), "{loaded_at:?}");
    fg.gateway.shutdown().await;
}

/// A self-signed certificate for `weir.test`: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["weir.test".to_owned()]).expect("self-signed cert");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn tls_client(cert_pem: &str, addr: SocketAddr) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("cert parses");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert])
        .resolve("weir.test", addr)
        .timeout(support::DEADLINE)
        .build()
        .expect("TLS client")
}

async fn models_over_tls(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<StatusCode> {
    let url = format!("https://weir.test:{}/v1/models", addr.port());
    client.get(url).bearer_auth(TEAM_KEY).send().await.map(|r| r.status())
}

/// Writes `pem` to `path` atomically, as cert-manager and certbot do.
fn install(path: &Path, pem: &str) {
    rewrite(path, pem);
}

#[tokio::test]
async fn a_rotated_certificate_is_presented_to_new_connections() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_cert, old_key) = certificate();
    install(&cert_path, &old_cert);
    install(&key_path, &old_key);
    let tls = format!("server:\n  tls: {{ cert: \"{}\", key: \"{}\" }}\n", cert_path.display(), key_path.display());
    let fg = start_file(&standard_with_admin(&upstream).replacen("server:\n", &tls, 1)).await;
    let addr = fg.gateway.addr();
    let trusts_old = tls_client(&old_cert, addr);
    assert_eq!(models_over_tls(&trusts_old, addr).await.expect("TLS with the first certificate"), 200);

    let (new_cert, new_key) = certificate();
    install(&key_path, &new_key);
    install(&cert_path, &new_cert);
    let trusts_new = tls_client(&new_cert, addr);
    let deadline = Instant::now() + support::DEADLINE;
    while models_over_tls(&tls_client(&new_cert, addr), addr).await.is_err() {
        assert!(Instant::now() < deadline, "the new certificate was not presented in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(models_over_tls(&trusts_new, addr).await.expect("new certificate"), 200);
    // The old client's open connection keeps its session; a new connection meets the new cert.
    assert_eq!(models_over_tls(&trusts_old, addr).await.expect("open connection survives"), 200);
    assert!(models_over_tls(&tls_client(&old_cert, addr), addr).await.is_err(), "new connections get the new cert");

    // A broken certificate is rejected and the working one stays.
    install(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let (status, body) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0].as_str().is_some_and(|e| e.starts_with("server.tls:")), "{body}");
    assert_eq!(models_over_tls(&tls_client(&new_cert, addr), addr).await.expect("the working cert stays"), 200);
    fg.gateway.shutdown().await;
}

#[tokio::test]
async fn tls_can_be_turned_on_by_a_reload() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream);
    let fg = start_file(&yaml).await;
    let (cert, key) = certificate();
    let (cert_path, key_path) = (fg.dir.path().join("cert.pem"), fg.dir.path().join("key.pem"));
    install(&cert_path, &cert);
    install(&key_path, &key);
    let tls = format!("server:\n  tls: {{ cert: \"{}\", key: \"{}\" }}\n", cert_path.display(), key_path.display());
    rewrite(&fg.path, &yaml.replacen("server:\n", &tls, 1));
    let (status, body) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 200, "{body}");
    let addr = fg.gateway.addr();
    assert_eq!(models_over_tls(&tls_client(&cert, addr), addr).await.expect("TLS after the reload"), 200);
    fg.gateway.shutdown().await;
}

#[tokio::test]
async fn a_new_listen_address_moves_the_client_port() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = standard_with_admin(&upstream);
    let (first, second) = (free_port(), free_port());
    let fg = start_file(&yaml.replacen("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{first}"), 1)).await;
    assert_eq!(fg.gateway.addr().port(), first);
    let (status, _, body) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{body}");

    rewrite(&fg.path, &yaml.replacen("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{second}"), 1));
    let (status, body) = admin_reload(&fg.gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fg.gateway.addr().port(), second);
    let (status, _, body) = chat(&fg.gateway, "chat").await;
    assert_eq!(status, 200, "{body}");
    let old: SocketAddr = format!("127.0.0.1:{first}").parse().expect("addr");
    let closed = support::eventually(support::DEADLINE, || std::net::TcpStream::connect(old).is_err()).await;
    assert!(closed, "the old port still accepts connections");
    fg.gateway.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let config = |models: &str| {
        format!(
            "server:\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin_port}\n\
             backends:\n  mock: {{ kind: mock, latency: 1ms }}\n\
             models:\n  mock: {{ targets: [ {{ backend: mock, model: mock }} ] }}\n{models}\
             auth: {{ mode: none }}\n"
        )
    };
    let path = cwd.path().join("weir.yaml");
    std::fs::write(&path, config("")).expect("write config");
    let mut serve = ServeGuard::spawn(cwd.path(), &["--config", path.to_str().expect("UTF-8 path")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    serve.wait_listening(addr);
    let status_of = |model: &'static str| async move {
        let response = support::http()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat_body(model, false))
            .send()
            .await
            .expect("request to weir serve");
        response.status()
    };
    let logged = |serve: &ServeGuard, what: &str| {
        serve.stderr().lines().any(|line| line.contains("sighup") && line.contains(what))
    };

    // SIGHUP does not end the process: it reloads, here finding nothing new.
    serve.signal("HUP");
    let deadline = Instant::now() + support::DEADLINE;
    while !logged(&serve, "nothing changed") {
        assert!(Instant::now() < deadline, "no reload logged after SIGHUP:\n{}", serve.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken file: rejected with its place, and the old config keeps serving.
    std::fs::write(&path, config("  second: { targets: [ { backend: nowhere, model: m } ] }\n")).expect("write");
    serve.signal("HUP");
    let place = format!("{}:", path.display());
    while !logged(&serve, &place) {
        assert!(Instant::now() < deadline, "no rejection logged after SIGHUP:\n{}", serve.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of("mock").await, 200);
    assert_eq!(status_of("second").await, 404);

    std::fs::write(&path, config("  second: { targets: [ { backend: mock, model: m } ] }\n")).expect("write");
    serve.signal("HUP");
    while status_of("second").await != 200 {
        assert!(Instant::now() < deadline, "the fixed config was not applied:\n{}", serve.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = serve.terminate();
    assert!(status.success(), "{}", serve.stderr());
}

/// Two valid configs that differ in routes, a backend's settings and the model list.
fn soak_configs(upstream: &MockUpstream) -> (String, String) {
    let a = standard_with_admin(upstream);
    let b = a
        .replace(
            "    targets: [ { backend: up, model: upstream-chat } ]",
            "    targets: [ { backend: up, model: upstream-chat, weight: 1 }, { backend: mock, model: mock-chat, weight: 1 } ]",
        )
        .replace("  mock: { kind: mock, latency: 1ms }", "  mock: { kind: mock, latency: 2ms }")
        .replace(&format!("    api_key: {UPSTREAM_KEY}\n"), &format!("    api_key: {UPSTREAM_KEY}\n    headers: {{ x-config: b }}\n"))
        .replace("models:\n", "models:\n  extra:\n    targets: [ { backend: mock, model: extra } ]\n");
    assert_ne!(a, b);
    (a, b)
}

/// One request, JSON or streamed; `Err` says what went wrong.
async fn soak_request(client: &reqwest::Client, base: &str, stream: bool) -> Result<(), String> {
    let response = client
        .post(format!("{base}/chat/completions"))
        .bearer_auth(ALL_KEY)
        .header("content-type", "application/json")
        .body(chat_body("chat", stream))
        .send()
        .await
        .map_err(|err| format!("send: {err}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|err| format!("body: {err}"))?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    if stream {
        let events = support::sse_events(&text);
        let clean = events.last().is_some_and(|e| e == "[DONE]") && !events.iter().any(|e| e.contains("\"error\""));
        return if clean { Ok(()) } else { Err(format!("stream did not end cleanly: {text}")) };
    }
    let json: Value = serde_json::from_str(&text).map_err(|err| format!("{err}: {text}"))?;
    if json["object"] == "chat.completion" { Ok(()) } else { Err(text) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_reloads_every_100ms_under_32_clients_without_a_failed_request() {
    // Bounded: long enough in CI to cover many reloads mid-request, short on a laptop.
    let run_for = if std::env::var("CI").is_ok_and(|v| v == "true") { 15 } else { 4 };
    let run_for = Duration::from_secs(run_for);
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(2))).await;
    let (a, b) = soak_configs(&upstream);
    let fg = start_file(&a).await;
    let base = support::base_url(&fg.gateway);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut clients = Vec::new();
    for client_no in 0..32 {
        let (base, stop, done, failures) = (base.clone(), stop.clone(), done.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let client = support::http();
            let mut stream = client_no % 2 == 0;
            while !stop.load(Ordering::Relaxed) {
                match soak_request(&client, &base, stream).await {
                    Ok(()) => drop(done.fetch_add(1, Ordering::Relaxed)),
                    Err(err) => failures.lock().expect("failures").push(err),
                }
                stream = !stream;
            }
        }));
    }

    let started = Instant::now();
    let mut applied = 0;
    let mut configs = [&b, &a].into_iter().cycle();
    while started.elapsed() < run_for {
        rewrite(&fg.path, configs.next().expect("cycle"));
        let (status, body) = admin_reload(&fg.gateway).await;
        assert_eq!(status, 200, "{body}");
        if body["outcome"] == "applied" {
            applied += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let failures = std::mem::take(&mut *failures.lock().expect("failures"));
    let done = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        done + failures.len(),
        failures.first()
    );
    assert!(done >= 64, "only {done} requests completed");
    assert!(applied >= 10, "only {applied} reloads applied");
    fg.gateway.shutdown().await;
}

/// `rpm: 3` for `team`, `rpm: all_rpm` for `all`, on the standard fixture with an admin token.
fn limited_yaml(upstream: &MockUpstream, all_rpm: u32, extra_model: bool) -> String {
    let mut yaml =
        standard_with_admin(upstream).replacen("    models: [chat]\n", "    models: [chat]\n    rate: { rpm: 3 }\n", 1);
    let all = yaml.find("  - name: all\n").expect("key all");
    let after_key = all + yaml[all..].find("    key: ").expect("all's key");
    let line_end = after_key + yaml[after_key..].find('\n').expect("line end") + 1;
    yaml.insert_str(line_end, &format!("    rate: {{ rpm: {all_rpm} }}\n"));
    if extra_model {
        yaml = yaml.replacen("models:\n", "models:\n  extra:\n    targets: [ { backend: mock, model: mock-2 } ]\n", 1);
    }
    yaml
}

async fn chat_as(gateway: &Gateway, key: &str) -> (StatusCode, http::HeaderMap) {
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(chat_body("chat", false))
        .send()
        .await
        .expect("request reaches the gateway");
    let status = response.status();
    let headers = response.headers().clone();
    let _ = response.bytes().await;
    (status, headers)
}

#[tokio::test]
async fn rate_limit_windows_survive_a_reload_that_does_not_touch_the_key() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let file = start_file(&limited_yaml(&upstream, 10, false)).await;
    for _ in 0..3 {
        assert_eq!(chat_as(&file.gateway, TEAM_KEY).await.0, 200);
    }

    // Only `all`'s limit changes, and a model is added.
    rewrite(&file.path, &limited_yaml(&upstream, 20, true));
    let (status, body) = admin_reload(&file.gateway).await;
    assert_eq!(status, 200, "{body}");
    assert!(matches!(body["outcome"].as_str(), Some("applied" | "unchanged")), "{body}");
    assert_eq!(chat(&file.gateway, "extra").await.0, 200, "the new config is live");

    // `team`'s window kept its 3 requests: the 4th is refused.
    let (status, headers) = chat_as(&file.gateway, TEAM_KEY).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let (status, usage) = admin(&file.gateway, http::Method::GET, "/admin/keys/team/usage", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{usage}");
    assert!(usage.to_string().contains("3"), "{usage}");
    // `all` is still admitted.
    assert_eq!(chat_as(&file.gateway, ALL_KEY).await.0, 200);
}
