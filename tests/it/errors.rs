//! Every error a client can get: status, OpenAI's error shape, `param` where it applies,
//! and the headers every response carries.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::time::Instant;
use weir::Gateway;

use crate::support::upstream::End;
use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY, Timeouts};

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

async fn post(gateway: &Gateway, path: &str, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = support::http()
        .post(format!("http://{}{path}", gateway.addr()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request reaches the gateway")
}

/// Checks status, the OpenAI error shape and the headers every response has; returns `error`.
async fn expect_error(response: reqwest::Response, status: u16, param: Option<&str>) -> Value {
    let (got, headers, body) = support::body_json(response).await;
    assert_eq!(got.as_u16(), status, "status; body: {body}");
    assert!(headers.contains_key("x-request-id"), "x-request-id on a {status}");
    assert_overhead(&headers);
    let error = body.get("error").unwrap_or_else(|| panic!("no `error` object: {body}"));
    let object = error.as_object().unwrap_or_else(|| panic!("`error` is not an object: {body}"));
    for field in ["message", "type", "code", "param"] {
        assert!(object.contains_key(field), "error lacks `{field}`: {body}");
    }
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "message is a non-empty string: {body}");
    assert!(error["type"].is_string(), "type is a string: {body}");
    assert!(error["code"].is_string() || error["code"].is_null(), "code is a string or null: {body}");
    assert_eq!(error["param"].as_str(), param, "param: {body}");
    error.clone()
}

fn assert_overhead(headers: &http::HeaderMap) {
    let overhead = headers.get("x-weir-overhead-ms").expect("x-weir-overhead-ms header");
    let ms: f64 = overhead.to_str().expect("ASCII").parse().expect("overhead is a number");
    assert!(ms >= 0.0 && ms.is_finite());
}

fn message(error: &Value) -> &str {
    error["message"].as_str().expect("message")
}

#[tokio::test]
async fn bad_json_is_400() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    for body in [r#"{"model":"chat","#, "[1,2]", "not json", r#"{"model":"chat","messages":[{"role":"user"}]} x"#] {
        let error = expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body).await, 400, None).await;
        assert_eq!(error["type"], "invalid_request_error", "for {body}");
    }
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn bad_fields_are_400_naming_the_param() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let cases = [
        (r#"{"messages":[{"role":"user","content":"hi"}]}"#, "model"),
        (r#"{"model":42,"messages":[{"role":"user","content":"hi"}]}"#, "model"),
        (r#"{"model":"chat"}"#, "messages"),
        (r#"{"model":"chat","messages":[]}"#, "messages"),
        (r#"{"model":"chat","messages":[{"role":1,"content":"hi"}]}"#, "messages[0].role"),
        (r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#, "stream"),
    ];
    for (body, param) in cases {
        let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body).await;
        let error = expect_error(response, 400, Some(param)).await;
        assert_eq!(error["type"], "invalid_request_error", "for {body}");
    }
    let error =
        expect_error(post(&gateway, "/v1/embeddings", Some(ALL_KEY), r#"{"model":"embed"}"#).await, 400, Some("input"))
            .await;
    assert!(message(&error).contains("input"));
    assert!(upstream.requests().is_empty(), "invalid requests never reach the backend");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_message_without_a_role_names_messages_0_role() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let body = r#"{"model":"chat","messages":[{"content":"hi"}]}"#;
    // OpenAI answers `param: "messages[0].role"` (the missing field), not the message.
    expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body).await, 400, Some("messages[0].role"))
        .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn unknown_model_is_404() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let body = r#"{"model":"gpt-nope","messages":[{"role":"user","content":"hi"}]}"#;
    let error =
        expect_error(post(&gateway, "/v1/chat/completions", Some(ALL_KEY), body).await, 404, Some("model")).await;
    assert_eq!(error["code"], "model_not_found");
    assert!(message(&error).contains("gpt-nope"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_azure_style_api_key_header_is_accepted() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .header("api-key", TEAM_KEY)
        .body(CHAT)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.only_request().header("api-key"), None, "the client's key is not forwarded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_sdk_parses_weir_errors() {
    use async_openai::error::OpenAIError;
    use async_openai::types::chat::{ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs};

    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-nope")
        .messages(vec![ChatCompletionRequestUserMessage::from("hi").into()])
        .build()
        .expect("request builds");
    let err = support::openai(&gateway, Some(ALL_KEY)).chat().create(request).await.expect_err("unknown model");
    let OpenAIError::ApiError(response) = err else { panic!("expected an API error, got {err:?}") };
    assert_eq!(response.status_code.as_u16(), 404);
    assert_eq!(response.api_error.code.as_deref(), Some("model_not_found"));
    assert_eq!(response.api_error.param.as_deref(), Some("model"));
    assert_eq!(response.api_error.r#type.as_deref(), Some("invalid_request_error"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn missing_and_unknown_keys_are_401() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    expect_error(post(&gateway, "/v1/chat/completions", None, CHAT).await, 401, None).await;
    expect_error(post(&gateway, "/v1/chat/completions", Some("sk-not-a-key"), CHAT).await, 401, None).await;
    // Models are listed per key, so listing needs one too.
    let response = support::http().get(format!("{}/models", support::base_url(&gateway))).send().await.expect("sent");
    expect_error(response, 401, None).await;
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_model_outside_the_allow_list_is_403() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let body = r#"{"model":"embed","input":"x"}"#;
    let error = expect_error(post(&gateway, "/v1/embeddings", Some(TEAM_KEY), body).await, 403, Some("model")).await;
    assert!(message(&error).contains("embed"));
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_body_over_max_body_is_413() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let padding = "x".repeat(70 * 1024);
    let body = format!(r#"{{"model":"chat","messages":[{{"role":"user","content":"{padding}"}}]}}"#);

    // With a Content-Length...
    expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), &body).await, 413, None).await;

    // ...and chunked, where only counting the bytes can tell.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.as_bytes().chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(TEAM_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("request sent");
    expect_error(response, 413, None).await;
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_connection_is_502() {
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let gateway = support::standard_at(&format!("http://127.0.0.1:{port}/v1"), Timeouts::default()).await;
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.headers().get("x-weir-backend").and_then(|v| v.to_str().ok()), Some("up"));
    let error = expect_error(response, 502, None).await;
    assert_eq!(error["type"], "api_error");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_502() {
    let upstream = MockUpstream::start(Behavior::Close).await;
    let gateway = support::standard(&upstream).await;
    expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await, 502, None).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_upstream_first_byte_timeout_is_504() {
    let upstream = MockUpstream::start(Behavior::Hang).await;
    let timeouts = Timeouts { first_byte: "300ms", ..Timeouts::default() };
    let gateway = support::standard_with(&upstream, timeouts).await;
    // A stream whose headers never come is a plain 504 too: nothing was streamed yet.
    for body in [CHAT, CHAT_STREAM] {
        let started = Instant::now();
        let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body).await;
        let elapsed = started.elapsed();
        assert_eq!(response.headers().get("x-weir-backend").and_then(|v| v.to_str().ok()), Some("up"));
        let error = expect_error(response, 504, None).await;
        assert_eq!(error["type"], "api_error");
        assert!(elapsed >= Duration::from_millis(250), "answered before the timeout: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "the 300ms first_byte timeout took {elapsed:?}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_4xx_answers_pass_through_with_status_and_message() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    for status in [400u16, 401, 404, 422] {
        let text = format!("upstream says {status}");
        upstream.set(Behavior::error(status, &text));
        let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
        assert_eq!(response.headers().get("x-weir-backend").and_then(|v| v.to_str().ok()), Some("up"));
        let (got, _, body) = support::body_json(response).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(body["error"]["message"], text.as_str());
    }

    // A 4xx whose body is not OpenAI-shaped still reaches the client in OpenAI's shape.
    upstream.set(Behavior::reply(422, "unprocessable: bad tool schema").with_header("content-type", "text/plain"));
    let error = expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await, 422, None).await;
    assert!(message(&error).contains("unprocessable: bad tool schema"), "{error}");

    // Last: a 429 with a hint also takes the target out of rotation for that long.
    upstream.set(Behavior::error(429, "slow down").with_header("retry-after", "7"));
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));
    let error = expect_error(response, 429, None).await;
    assert_eq!(message(&error), "slow down");
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_5xx_becomes_502_keeping_the_message() {
    let upstream = MockUpstream::start(Behavior::error(503, "engine overloaded")).await;
    let gateway = support::standard(&upstream).await;
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    assert_eq!(response.headers().get("x-weir-backend").and_then(|v| v.to_str().ok()), Some("up"));
    let error = expect_error(response, 502, None).await;
    assert_eq!(error["type"], "api_error");
    assert!(message(&error).contains("engine overloaded"), "{error}");

    upstream.set(Behavior::reply(500, "plain boom"));
    let error = expect_error(post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await, 502, None).await;
    assert!(message(&error).contains("plain boom"), "{error}");
    gateway.shutdown().await;
}

/// Reads a stream and checks it ended with exactly one error event and no `[DONE]`, after
/// between one and `sent` of the upstream's chunks (a cut may lose what was in flight).
async fn expect_stream_error(response: reqwest::Response, sent: usize) -> Value {
    assert_eq!(response.status(), StatusCode::OK, "the stream had started");
    let text = support::read_sse(response).await;
    let events = support::sse_events(&text);
    assert!(!events.iter().any(|e| e == "[DONE]"), "a failed stream must not end with [DONE]: {text}");
    let normal_events = events.len().saturating_sub(1);
    assert!((1..=sent).contains(&normal_events), "expected 1..={sent} chunks then an error: {events:#?}");
    for event in &events[..normal_events] {
        let chunk: Value = serde_json::from_str(event).expect("chunk is JSON");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    let last: Value = serde_json::from_str(events.last().expect("an event")).expect("error event is JSON");
    let error = last.get("error").unwrap_or_else(|| panic!("last event is not an error: {last}"));
    for field in ["message", "type", "code", "param"] {
        assert!(error.get(field).is_some(), "error event lacks `{field}`: {last}");
    }
    assert!(!events[..normal_events].iter().any(|e| e.contains("\"finish_reason\":\"stop\"")), "no made-up finish");
    error.clone()
}

#[tokio::test]
async fn a_stream_cut_after_the_first_byte_ends_with_one_error_event() {
    let upstream = MockUpstream::start(Behavior::stream_then(3, End::Cut)).await;
    let gateway = support::standard(&upstream).await;
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT_STREAM).await;
    let error = expect_stream_error(response, 3).await;
    assert!(message(&error).contains("up"), "names the backend: {error}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_total_timeout_mid_stream_ends_with_one_error_event() {
    // Chunks keep coming (so `idle` never fires) but the whole answer takes longer than `total`.
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(100))).await;
    let timeouts = Timeouts { total: "450ms", idle: "2s", ..Timeouts::default() };
    let gateway = support::standard_with(&upstream, timeouts).await;
    let body = r#"{"model":"chat","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"long"}]}"#;
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), body).await;
    let error = expect_stream_error(response, 20).await;
    assert!(message(&error).contains("total"), "{error}");
    assert_eq!(error["type"], "api_error");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_idle_timeout_mid_stream_ends_with_one_error_event() {
    let upstream = MockUpstream::start(Behavior::stream_then(2, End::Hang)).await;
    let timeouts = Timeouts { idle: "300ms", ..Timeouts::default() };
    let gateway = support::standard_with(&upstream, timeouts).await;
    let started = Instant::now();
    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT_STREAM).await;
    let error = expect_stream_error(response, 2).await;
    let elapsed = started.elapsed();
    assert!(message(&error).contains("idle"), "{error}");
    assert!(elapsed < Duration::from_secs(5), "a 300ms idle timeout took {elapsed:?}");
    // The gateway gave up on the upstream stream: it must not stay open.
    assert!(
        support::eventually(Duration::from_secs(3), || upstream.cancelled() == 1).await,
        "the upstream stream was not closed after the idle timeout"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_openai_shaped() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let error = expect_error(post(&gateway, "/v1/nope", Some(TEAM_KEY), CHAT).await, 404, None).await;
    assert_eq!(error["type"], "invalid_request_error");
    let response = support::http()
        .get(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(TEAM_KEY)
        .send()
        .await
        .expect("sent");
    expect_error(response, 405, None).await;
    // The client port serves no health or metrics endpoints.
    let response = support::http().get(format!("http://{}/healthz", gateway.addr())).send().await.expect("sent");
    expect_error(response, 404, None).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_always_weirs_own() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let url = format!("{}/chat/completions", support::base_url(&gateway));

    let first = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    let second = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    let id = |r: &reqwest::Response| {
        r.headers().get("x-request-id").expect("x-request-id").to_str().expect("ASCII").to_owned()
    };
    let (a, b) = (id(&first), id(&second));
    assert!(!a.is_empty());
    assert_ne!(a, b, "generated ids are unique");

    for (key, expected_status) in [(TEAM_KEY, 200u16), ("sk-wrong", 401)] {
        let response = support::http()
            .post(&url)
            .bearer_auth(key)
            .header("x-request-id", "client-chosen-id-123")
            .body(CHAT)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), expected_status);
        let id = response.headers().get("x-request-id").expect("id").to_str().expect("ASCII");
        assert!(id.starts_with("req_") && id != "client-chosen-id-123", "weir's own id, not the client's: {id}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn success_responses_carry_weir_headers() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;

    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT).await;
    let headers = response.headers().clone();
    assert_eq!(response.status(), 200);
    assert_eq!(headers.get("x-weir-backend").expect("x-weir-backend"), "up");
    assert!(
        headers.get("content-type").expect("content-type").to_str().expect("ASCII").starts_with("application/json")
    );
    assert!(headers.contains_key("x-request-id"));
    assert_overhead(&headers);

    let response = post(&gateway, "/v1/chat/completions", Some(TEAM_KEY), CHAT_STREAM).await;
    let headers = response.headers().clone();
    assert_eq!(response.status(), 200);
    assert_eq!(headers.get("content-type").expect("content-type"), "text/event-stream");
    assert_eq!(headers.get("cache-control").expect("cache-control"), "no-cache");
    assert_eq!(headers.get("x-accel-buffering").expect("x-accel-buffering"), "no");
    assert_eq!(headers.get("x-weir-backend").expect("x-weir-backend"), "up");
    assert!(headers.contains_key("x-request-id"));
    assert_overhead(&headers);
    let events = support::sse_events(&support::read_sse(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    gateway.shutdown().await;
}
