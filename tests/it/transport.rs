//! Transports and auth modes: h2c, TLS with ALPN, `auth: passthrough` and `auth: none`.

use std::net::SocketAddr;

use http::Version;
use weir::Gateway;
use weir::config::{AuthMode, TlsConfig};

use crate::support::{self, Behavior, MockUpstream, TEAM_KEY, Timeouts, UPSTREAM_KEY};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

async fn chat(client: &reqwest::Client, base: &str, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = client.post(format!("{base}/chat/completions")).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.body(body.to_owned()).send().await.expect("request reaches the gateway")
}

#[tokio::test]
async fn http2_cleartext_with_prior_knowledge() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::http_h2c();
    let base = support::base_url(&gateway);

    let response = chat(&client, &base, Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.version(), Version::HTTP_2);
    let (status, headers, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(body["object"], "chat.completion");

    let response = chat(&client, &base, Some(TEAM_KEY), CHAT_STREAM).await;
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers().get("content-type").expect("content-type"), "text/event-stream");
    let events = support::sse_events(&support::read_sse(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    gateway.shutdown().await;
}

struct TlsGateway {
    gateway: Gateway,
    cert: reqwest::Certificate,
    _dir: tempfile::TempDir,
}

/// The standard fixture served over TLS with a fresh self-signed certificate for `weir.test`.
async fn tls_gateway(upstream: &MockUpstream) -> TlsGateway {
    support::init();
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["weir.test".to_owned()]).expect("self-signed cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");

    let yaml = support::standard_yaml(&upstream.url(), Timeouts::default()).replacen(
        "server:\n",
        &format!("server:\n  tls: {{ cert: \"{}\", key: \"{}\" }}\n", cert_path.display(), key_path.display()),
        1,
    );
    let config = support::config(&yaml);
    assert_eq!(config.server.tls, Some(TlsConfig { cert: cert_path, key: key_path }), "server.tls was read");
    let gateway = support::start_config(config).await;
    let cert = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).expect("cert parses");
    TlsGateway { gateway, cert, _dir: dir }
}

fn tls_client(cert: &reqwest::Certificate, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([cert.clone()])
        .resolve("weir.test", addr)
        .timeout(support::DEADLINE);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("TLS client")
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn_and_serves_http1_too() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let tls = tls_gateway(&upstream).await;
    let addr = tls.gateway.addr();
    let base = format!("https://weir.test:{}/v1", addr.port());

    let h2 = tls_client(&tls.cert, addr, false);
    let response = chat(&h2, &base, Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.version(), Version::HTTP_2, "ALPN offers h2 and the client takes it");
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");

    let response = chat(&h2, &base, Some(TEAM_KEY), CHAT_STREAM).await;
    assert_eq!(response.version(), Version::HTTP_2);
    let events = support::sse_events(&support::read_sse(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let h1 = tls_client(&tls.cert, addr, true);
    let response = chat(&h1, &base, Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.version(), Version::HTTP_11);
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");

    // A client that does not trust the certificate cannot connect.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .resolve("weir.test", addr)
        .build()
        .expect("client");
    assert!(untrusting.get(format!("{base}/models")).send().await.is_err());
    tls.gateway.shutdown().await;
}

#[tokio::test]
async fn the_sdk_works_over_tls() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let tls = tls_gateway(&upstream).await;
    let addr = tls.gateway.addr();
    let config = async_openai::config::OpenAIConfig::new()
        .with_api_base(format!("https://weir.test:{}/v1", addr.port()))
        .with_api_key(TEAM_KEY);
    let client = async_openai::Client::build(tls_client(&tls.cert, addr, false), config);
    let models = client.models().list().await.expect("models over TLS");
    assert_eq!(models.data.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["chat"]);
    tls.gateway.shutdown().await;
}

fn with_auth(mode: &str) -> String {
    support::standard_yaml("URL", Timeouts::default())
        .replace("auth: { mode: keys }", &format!("auth: {{ mode: {mode} }}"))
}

async fn gateway_with_auth(upstream: &MockUpstream, mode: &str, auth: AuthMode) -> Gateway {
    let yaml = with_auth(mode).replace("URL", &upstream.url());
    let config = support::config(&yaml);
    assert_eq!(config.auth, auth);
    support::start_config(config).await
}

#[tokio::test]
async fn passthrough_forwards_the_clients_authorization() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = gateway_with_auth(&upstream, "passthrough", AuthMode::Passthrough).await;
    let client_key = "sk-proj-client-own-provider-key";

    let response = chat(&support::http(), &support::base_url(&gateway), Some(client_key), CHAT).await;
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");

    let seen = upstream.only_request();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {client_key}").as_str()));
    assert_eq!(seen.json()["model"], "upstream-chat");
    gateway.shutdown().await;
}

#[tokio::test]
async fn passthrough_never_lends_the_backend_key_to_a_keyless_client() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = gateway_with_auth(&upstream, "passthrough", AuthMode::Passthrough).await;

    let response = chat(&support::http(), &support::base_url(&gateway), None, CHAT).await;
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.only_request().header("authorization"), None, "no credential goes upstream");
    gateway.shutdown().await;
}

#[tokio::test]
async fn auth_none_needs_no_key() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = gateway_with_auth(&upstream, "none", AuthMode::None).await;
    let base = support::base_url(&gateway);

    let (status, _, body) = support::body_json(chat(&support::http(), &base, None, CHAT).await).await;
    assert_eq!(status, 200, "{body}");
    // Any key is ignored, and never forwarded: the backend's own key goes upstream.
    let (status, _, _) = support::body_json(chat(&support::http(), &base, Some("sk-whatever"), CHAT).await).await;
    assert_eq!(status, 200);
    for seen in upstream.requests() {
        assert_eq!(seen.header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    }

    let models = support::openai(&gateway, None).models().list().await.expect("models without a key");
    let mut ids: Vec<String> = models.data.into_iter().map(|m| m.id).collect();
    ids.sort();
    assert_eq!(ids, ["chat", "embed", "local"]);
    assert_eq!(upstream.requests().len(), 2, "listing models does not call the backend");
    gateway.shutdown().await;
}
