//! Telemetry: spans exported over OTLP (HTTP/protobuf and gRPC) to an in-process receiver,
//! `traceparent` continued and passed upstream, `/metrics` on the admin port, and the
//! dashboards' queries against a real Prometheus.

pub(crate) mod otlp;
mod prometheus;

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

use self::otlp::{Receiver, attr};
use crate::support::{self, ALL_KEY, Behavior, DEADLINE, MockUpstream, TEAM_KEY};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The standard fixture's shape, with tracing to `otlp` and a price on `chat`.
fn traced_yaml(upstream: &MockUpstream, telemetry: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}
backends:
  up: {{ kind: openai, base_url: {url}, api_key: sk-up }}
models:
  chat:
    targets: [ {{ backend: up, model: upstream-chat, variant: control }} ]
    price: {{ input_per_mtok: 1.0, output_per_mtok: 2.0 }}
keys:
  - {{ name: team, key: {team} }}
auth: {{ mode: keys }}
telemetry: {telemetry}
"#,
        url = upstream.url(),
        team = weir::auth::hash_key(TEAM_KEY),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn by_kind(spans: &[Span], kind: SpanKind) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind == kind as i32).collect()
}

async fn chat(gateway: &weir::Gateway, body: serde_json::Value, traceparent: Option<&str>) -> reqwest::Response {
    let mut request = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(TEAM_KEY)
        .header("x-request-id", "client-42")
        .json(&body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request.send().await.expect("request reaches the gateway")
}

#[tokio::test]
async fn http_protobuf_export_continues_the_clients_trace_with_genai_attributes() {
    let receiver = Receiver::start().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let telemetry = format!("{{ otlp: {{ endpoint: {}, protocol: http }}, capture_content: true }}", receiver.url());
    let gateway = support::start(&traced_yaml(&upstream, &telemetry)).await;

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "say hi"}], "temperature": 0.5, "max_tokens": 40});
    let response = chat(&gateway, body, Some(&traceparent)).await;
    assert_eq!(response.status(), 200);
    let (_, _, answer) = support::body_json(response).await;
    gateway.shutdown().await; // flushes the export queue

    let spans = receiver.spans();
    assert_eq!(receiver.service_names().first().map(String::as_str), Some("weir"));
    let [server] = by_kind(&spans, SpanKind::Server)[..] else { panic!("one server span: {spans:#?}") };
    let [client] = by_kind(&spans, SpanKind::Client)[..] else { panic!("one attempt span: {spans:#?}") };
    assert_eq!(server.name, "chat chat");
    assert_eq!(hex(&server.trace_id), CLIENT_TRACE, "the client's trace is continued");
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN, "the server span's parent is the client's span");
    assert_eq!(client.name, "chat upstream-chat");
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id, "attempt is a child of the server span");
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);

    let usage = &answer["usage"];
    for (key, expected) in [
        ("gen_ai.operation.name", "chat".to_owned()),
        ("gen_ai.provider.name", "openai".to_owned()),
        ("gen_ai.request.model", "chat".to_owned()),
        ("gen_ai.response.model", answer["model"].as_str().unwrap().to_owned()),
        ("gen_ai.request.temperature", "0.5".to_owned()),
        ("gen_ai.request.max_tokens", "40".to_owned()),
        ("gen_ai.usage.input_tokens", usage["prompt_tokens"].to_string()),
        ("gen_ai.usage.output_tokens", usage["completion_tokens"].to_string()),
        ("gen_ai.response.finish_reasons", answer["choices"][0]["finish_reason"].as_str().unwrap().to_owned()),
        ("weir.variant", "control".to_owned()),
        ("weir.cache", "bypass".to_owned()),
        ("weir.key", "team".to_owned()),
        ("http.response.status_code", "200".to_owned()),
    ] {
        assert_eq!(attr(server, key).as_deref(), Some(expected.as_str()), "server span attribute {key}");
    }
    // weir's own id, and the client's kept beside it.
    assert_eq!(attr(server, "weir.client_request_id").as_deref(), Some("client-42"));
    assert!(attr(server, "weir.request_id").is_some_and(|id| id.starts_with("req_")));
    let cost: f64 = attr(server, "weir.cost_usd").expect("cost").parse().unwrap();
    assert!(cost > 0.0);
    assert_eq!(attr(client, "gen_ai.request.model").as_deref(), Some("upstream-chat"));
    assert_eq!(attr(client, "http.response.status_code").as_deref(), Some("200"));

    // capture_content: prompt and completion as events.
    let event = |name: &str| server.events.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("event {name}"));
    let prompt = event("gen_ai.content.prompt").attributes.iter().find(|kv| kv.key == "gen_ai.prompt").unwrap();
    assert!(otlp::text(prompt.value.as_ref().unwrap()).contains("say hi"));
    let completion = event("gen_ai.content.completion").attributes.iter().find(|kv| kv.key == "gen_ai.completion");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(otlp::text(completion.unwrap().value.as_ref().unwrap()).contains(content));

    // The upstream got a traceparent in the same trace, naming the attempt's span.
    let seen = upstream.only_request();
    let upstream_parent = seen.header("traceparent").expect("traceparent sent upstream");
    assert_eq!(upstream_parent, format!("00-{CLIENT_TRACE}-{}-01", hex(&client.span_id)));
}

#[tokio::test]
async fn grpc_export_of_a_stream_without_content() {
    let receiver = Receiver::start().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let telemetry = format!("{{ otlp: {{ endpoint: {}, protocol: grpc }} }}", receiver.url());
    let gateway = support::start(&traced_yaml(&upstream, &telemetry)).await;

    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "stream it"}], "stream": true,
                      "stream_options": {"include_usage": true}});
    let response = chat(&gateway, body, None).await;
    assert_eq!(response.status(), 200);
    let text = support::read_sse(response).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    // A request for an unknown model is traced too, named by its operation only.
    let response = chat(&gateway, json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}), None).await;
    assert_eq!(response.status(), 404);
    gateway.shutdown().await;

    let spans = receiver.spans();
    let servers = by_kind(&spans, SpanKind::Server);
    let stream = servers.iter().find(|s| s.name == "chat chat").expect("stream's server span");
    assert_eq!(stream.parent_span_id, Vec::<u8>::new(), "a new trace has a root span");
    assert!(stream.events.is_empty(), "no content without capture_content");
    assert_eq!(attr(stream, "weir.stream").as_deref(), Some("true"));
    assert!(attr(stream, "weir.time_to_first_token_ms").is_some());
    assert_eq!(attr(stream, "gen_ai.response.model").as_deref(), Some("upstream-chat"));
    assert_eq!(attr(stream, "gen_ai.response.finish_reasons").as_deref(), Some("stop"));
    assert!(attr(stream, "gen_ai.usage.output_tokens").is_some());
    let unknown = servers.iter().find(|s| s.name == "chat").expect("unknown model's span");
    assert_eq!(attr(unknown, "http.response.status_code").as_deref(), Some("404"));
    assert_eq!(by_kind(&spans, SpanKind::Client).len(), 1, "only the stream reached a backend");

    let seen = upstream.only_request();
    let parent = seen.header("traceparent").expect("traceparent sent upstream");
    assert!(parent.starts_with(&format!("00-{}-", hex(&stream.trace_id))), "{parent}");
}

#[tokio::test]
async fn without_tracing_the_clients_traceparent_passes_through() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&gateway, body, Some(&traceparent)).await.status(), 200);
    assert_eq!(upstream.only_request().header("traceparent"), Some(traceparent.as_str()));
}

#[tokio::test]
async fn unsampled_traces_are_not_exported_but_still_propagated() {
    let receiver = Receiver::start().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let telemetry = format!("{{ otlp: {{ endpoint: {}, protocol: http }}, sample_ratio: 0 }}", receiver.url());
    let gateway = support::start(&traced_yaml(&upstream, &telemetry)).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&gateway, body, None).await.status(), 200);
    // The client's sampled flag overrides the ratio.
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&gateway, body, Some(&traceparent)).await.status(), 200);
    gateway.shutdown().await;

    let requests = upstream.requests();
    let first = requests[0].header("traceparent").expect("traceparent");
    assert!(first.ends_with("-00"), "unsampled flag propagated: {first}");
    let spans = receiver.spans();
    assert!(spans.iter().all(|s| hex(&s.trace_id) == CLIENT_TRACE), "only the client-sampled trace: {spans:#?}");
    assert_eq!(spans.len(), 2);
}

#[tokio::test]
async fn a_dead_collector_does_not_affect_requests() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let telemetry = format!("{{ otlp: {{ endpoint: http://{closed}, protocol: grpc }} }}");
    let gateway = support::start(&traced_yaml(&upstream, &telemetry)).await;
    for _ in 0..3 {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(chat(&gateway, body, None).await.status(), 200);
    }
    tokio::time::timeout(DEADLINE, gateway.shutdown()).await.expect("shutdown does not hang on export");
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_port() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&gateway, body, None).await.status(), 200);
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({"model": "missing", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let admin = format!("http://{}/metrics", gateway.admin_addr());
    let response = support::http().get(&admin).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"weir_requests_total{model="chat",backend="up",variant="up",status="200",cache="bypass",endpoint="chat"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"weir_requests_total{model="",backend="",variant="",status="404",cache="bypass",endpoint="chat"} 1"#
    ));
    assert!(text.contains(r#"weir_backend_inflight{backend="up"} 0"#), "in-flight back to 0 after the body");
    // The client port serves no metrics.
    let response = support::http().get(format!("http://{}/metrics", gateway.addr())).send().await.unwrap();
    assert_eq!(response.status(), 404);
}
