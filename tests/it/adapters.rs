//! Provider adapters: Anthropic (translated both ways, streaming included) and Azure OpenAI
//! (deployment URLs, `api-version`, `api-key`), plus a target's `params` defaults.
//!
//! Golden tests read Anthropic-shaped fixtures from `fixtures/anthropic/`, written from
//! Anthropic's public API reference; end-to-end tests drive weir with the OpenAI SDK in front
//! of a mock upstream answering with those fixtures.

use std::path::PathBuf;

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FinishReason, FunctionObject,
};
use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use weir::backends::anthropic::request::{DEFAULT_MAX_TOKENS, translate};
use weir::backends::anthropic::response::{completion, error_body};
use weir::backends::anthropic::{StreamError, StreamTranslator};

use crate::support::{self, Behavior, MockUpstream};

const CREATED: u64 = 1_700_000_000;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/anthropic").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

/// Runs the whole stream through a translator in the given pieces.
fn translate_stream(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Result<(), StreamError>) {
    let mut translator = StreamTranslator::new(include_usage, CREATED);
    let mut out = Vec::new();
    for piece in pieces {
        if let Err(err) = translator.push(piece, &mut out) {
            return (out, Err(err));
        }
    }
    let end = translator.finish(&mut out);
    (out, end)
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it (then review the diff).
fn golden(name: &str, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/anthropic").join(name);
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    assert_eq!(actual, fixture(name), "golden file {name} differs");
}

// === translation (golden) ===

#[test]
fn request_translation_matches_the_golden_file() {
    let (request, translated) = translate(object(fixture_json("request_full.openai.json"))).expect("translates");
    assert_eq!(serde_json::to_value(&request).unwrap(), fixture_json("request_full.anthropic.json"));
    assert!(translated.stream && translated.include_usage);
}

#[test]
fn request_defaults_and_choices() {
    let plain = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f"}}], "max_tokens": 7, "stop": "x"});
    let (request, translated) = translate(object(plain)).unwrap();
    let value = serde_json::to_value(&request).unwrap();
    assert_eq!(value["max_tokens"], 7);
    assert_eq!(value["tool_choice"], json!({"type": "any"}));
    assert_eq!(value["stop_sequences"], json!(["x"]));
    assert_eq!(value["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]));
    assert!(value.get("stream").is_none() && !translated.stream);

    let bare = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "none"});
    let value = serde_json::to_value(translate(object(bare)).unwrap().0).unwrap();
    assert_eq!(value["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(value["tool_choice"], json!({"type": "none"}));

    // Anthropic refuses empty text blocks: an empty tool result carries no content.
    let empty = json!({"model": "m", "messages": [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": ""}]});
    let value = serde_json::to_value(translate(object(empty)).unwrap().0).unwrap();
    assert_eq!(value["messages"][0]["content"], json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}]));
    assert_eq!(value["messages"][1]["content"], json!([{"type": "tool_result", "tool_use_id": "c", "content": []}]));
}

#[test]
fn unsupported_parameters_are_refused_by_name() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (field, value, param) in [
        ("n", json!(2), "n"),
        ("logprobs", json!(true), "logprobs"),
        ("top_logprobs", json!(3), "top_logprobs"),
        ("response_format", json!({"type": "json_object"}), "response_format"),
        ("frobnicate", json!(1), "frobnicate"),
        ("max_tokens", json!(0), "max_tokens"),
    ] {
        let mut request = object(base());
        request.insert(field.into(), value);
        let refusal = translate(request).expect_err(field);
        assert_eq!(refusal.param, param);
    }
    let mut bad_image = object(base());
    bad_image.insert(
        "messages".into(),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]),
    );
    assert_eq!(translate(bad_image).unwrap_err().param, "messages[0].content[0].image_url.url");
    let mut bad_args = object(base());
    bad_args.insert(
        "messages".into(),
        json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}]}]),
    );
    assert_eq!(translate(bad_args).unwrap_err().param, "messages[0].tool_calls[0].function.arguments");
    // Neutral values of the same parameters are fine.
    let mut neutral = object(base());
    neutral.insert("n".into(), json!(1));
    neutral.insert("logprobs".into(), json!(false));
    neutral.insert("presence_penalty".into(), json!(0));
    assert!(translate(neutral).is_ok());
}

#[test]
fn response_translation_matches_the_golden_file() {
    let answer = completion(fixture("message_tool_use.json").as_bytes(), CREATED).expect("translates");
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer, fixture_json("message_tool_use.openai.json"));

    let text: Value =
        serde_json::from_slice(&completion(fixture("message_text.json").as_bytes(), CREATED).unwrap()).unwrap();
    assert_eq!(text["choices"][0]["message"]["content"], "Hi! My name is Claude.");
    assert_eq!(text["choices"][0]["finish_reason"], "stop");
    assert!(text["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(
        text["usage"],
        json!({"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[test]
fn error_bodies_become_openai_errors_with_the_message_kept() {
    let body: Value =
        serde_json::from_slice(&error_body(fixture("error_invalid_request.json").as_bytes(), true)).unwrap();
    assert_eq!(body["error"]["message"], "messages: roles must alternate between \"user\" and \"assistant\"");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_request_error");
    let odd: Value = serde_json::from_slice(&error_body(b"upstream exploded", false)).unwrap();
    assert_eq!(odd["error"]["message"], "upstream exploded");
    assert_eq!(odd["error"]["type"], "api_error");
}

#[test]
fn streamed_tool_calls_match_the_golden_file() {
    let (out, end) = translate_stream(&[fixture("stream_tool_use.sse").as_bytes()], true);
    end.expect("stream completes");
    golden("stream_tool_use.openai.sse", std::str::from_utf8(&out).unwrap());
    // The SDK-independent reading: the assembled answer has both calls and the usage.
    let assembled = weir::wire::assemble(&out, true).expect("assembles");
    let calls = &assembled.body["choices"][0]["message"]["tool_calls"];
    assert_eq!(calls[0]["function"]["arguments"], "{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}");
    assert_eq!(calls[1]["function"]["name"], "get_time");
    assert_eq!(assembled.summary().finish_reasons, ["tool_calls"]);
    assert_eq!(assembled.usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.cached_tokens)), Some((592, 89, 100)));
    assert!(assembled.complete);
}

#[test]
fn streamed_text_matches_the_golden_file() {
    let (out, end) = translate_stream(&[fixture("stream_text.sse").as_bytes()], false);
    end.expect("stream completes");
    golden("stream_text.openai.sse", std::str::from_utf8(&out).unwrap());
}

#[test]
fn error_events_truncation_and_garbage_fail_cleanly() {
    let (out, end) = translate_stream(&[fixture("stream_error.sse").as_bytes()], false);
    assert_eq!(end, Err(StreamError::Upstream { kind: "overloaded_error".into(), message: "Overloaded".into() }));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Partial") && !text.contains("[DONE]"), "{text}");

    let whole = fixture("stream_text.sse");
    let cut = &whole.as_bytes()[..whole.len() / 2];
    let (out, end) = translate_stream(&[cut], false);
    assert!(matches!(end, Err(StreamError::Malformed(_))));
    assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));

    for garbage in
        [&b"data: {not json}\n\n"[..], b"data: {\"type\":\"content_block_delta\",\"index\":0}\n\n", b"\xff\xfe\n\n"]
    {
        let (out, end) = translate_stream(&[garbage], false);
        assert!(end.is_err(), "{:?}", String::from_utf8_lossy(garbage));
        assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    }

    let mut translator = StreamTranslator::new(false, CREATED);
    let endless = vec![b'x'; weir::backends::anthropic::stream::MAX_PENDING + 1];
    assert!(translator.push(&endless, &mut Vec::new()).is_err(), "an unbounded partial event is refused");
}

// === the stream translator under arbitrary splits and garbage ===

fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(bytes[start..cut].to_vec());
        start = cut;
    }
    pieces.push(bytes[start..].to_vec());
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Splitting a valid stream anywhere yields exactly the same output.
    #[test]
    fn any_split_of_a_valid_stream_gives_the_same_output(points in proptest::collection::vec(any::<usize>(), 0..24), usage in any::<bool>()) {
        let whole = fixture("stream_tool_use.sse").replace('\n', "\r\n");
        let (expected, end) = translate_stream(&[whole.as_bytes()], usage);
        prop_assert!(end.is_ok());
        let pieces = split_at_points(whole.as_bytes(), &points);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (out, end) = translate_stream(&refs, usage);
        prop_assert!(end.is_ok());
        prop_assert_eq!(out, expected);
    }

    /// Garbage, alone or spliced into a valid stream, never panics and never ends with a
    /// made-up `[DONE]` unless the upstream's own message_stop arrived.
    #[test]
    fn garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..512), at in any::<usize>(), points in proptest::collection::vec(any::<usize>(), 0..8)) {
        let (out, _) = translate_stream(&[&garbage], true);
        prop_assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
        let valid = fixture("stream_text.sse").into_bytes();
        let at = at % (valid.len() + 1);
        let mut mixed = valid[..at].to_vec();
        mixed.extend_from_slice(&garbage);
        mixed.extend_from_slice(&valid[at..]);
        let pieces = split_at_points(&mixed, &points);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let _ = translate_stream(&refs, true);
    }
}

// === end to end: the OpenAI SDK through weir to mock upstreams ===

fn adapters_yaml(anthropic_url: &str, azure_url: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}
backends:
  claude:
    kind: anthropic
    base_url: {anthropic_url}
    api_key: sk-ant-secret
    headers: {{ anthropic-beta: prompt-caching-2024-07-31 }}
    timeouts: {{ connect: 1s, first_byte: 2s, total: 10s, idle: 2s }}
  azure:
    kind: azure
    base_url: {azure_url}
    api_key: azure-secret
    api_version: 2024-10-21
    headers: {{ x-ms-useragent: weir-test }}
    timeouts: {{ connect: 1s, first_byte: 2s, total: 10s, idle: 2s }}
models:
  claude:
    targets: [ {{ backend: claude, model: claude-sonnet-4-5 }} ]
  claude-tuned:
    targets: [ {{ backend: claude, model: claude-haiku-4-5, params: {{ max_tokens: 1024, temperature: 0.2 }} }} ]
  azure:
    targets: [ {{ backend: azure, model: gpt4o-deploy, params: {{ max_tokens: 64 }} }} ]
auth: {{ mode: none }}
"#
    )
}

/// A gateway whose `claude` backend is `upstream` (Azure pointed at it too).
async fn gateway_for(upstream: &MockUpstream) -> weir::Gateway {
    let root = upstream.url().trim_end_matches("/v1").to_owned();
    support::start(&adapters_yaml(&root, &root)).await
}

fn chat(model: &str, prompt: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages(vec![ChatCompletionRequestUserMessage::from(prompt).into()])
        .build()
        .expect("request builds")
}

fn json_reply(body: &str) -> Behavior {
    Behavior::reply(200, body)
}

#[tokio::test]
async fn plain_chat_through_the_anthropic_adapter() {
    let upstream = MockUpstream::start(json_reply(&fixture("message_text.json"))).await;
    let gateway = gateway_for(&upstream).await;
    let client = support::openai(&gateway, None);

    let response = client.chat().create(chat("claude", "hello")).await.expect("chat succeeds");

    assert_eq!(response.choices[0].message.content.as_deref(), Some("Hi! My name is Claude."));
    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(response.usage.map(|u| u.total_tokens), Some(2598));
    let seen = upstream.only_request();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-secret"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("anthropic-beta"), Some("prompt-caching-2024-07-31"), "extra headers go upstream");
    assert!(seen.header("authorization").is_none());
    let body = seen.json();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}]));
    gateway.shutdown().await;
}

#[tokio::test]
async fn params_defaults_fill_only_what_the_client_left_out() {
    let upstream = MockUpstream::start(json_reply(&fixture("message_text.json"))).await;
    let gateway = gateway_for(&upstream).await;
    let client = support::openai(&gateway, None);
    let mut request = chat("claude-tuned", "hello");
    request.temperature = Some(0.9);
    client.chat().create(request).await.expect("chat succeeds");
    let body = upstream.only_request().json();
    assert_eq!(body["model"], "claude-haiku-4-5");
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(body["temperature"], 0.9);
    gateway.shutdown().await;
}

#[tokio::test]
async fn streamed_tool_calls_through_the_anthropic_adapter() {
    // The fixture arrives in small pieces that cut events, lines and UTF-8 anywhere.
    let sse = fixture("stream_tool_use.sse");
    let chunks: Vec<Bytes> = sse.as_bytes().chunks(37).map(Bytes::copy_from_slice).collect();
    let upstream = MockUpstream::start(Behavior::Chunks(chunks)).await;
    let gateway = gateway_for(&upstream).await;
    let client = support::openai(&gateway, None);
    let tool = ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: Some(json!({"type": "object", "properties": {"location": {"type": "string"}}})),
            strict: None,
        },
    });
    let mut request = chat("claude", "weather in SF?");
    request.tools = Some(vec![tool]);
    request.stream = Some(true);
    request.stream_options = Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });

    let mut stream = client.chat().create_stream(request).await.expect("stream starts");
    let (mut text, mut arguments, mut names, mut finish, mut usage) =
        (String::new(), vec![String::new(); 2], Vec::new(), None, None);
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        let chunk = chunk.expect("chunk parses");
        usage = usage.or(chunk.usage);
        for choice in chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
            finish = finish.or(choice.finish_reason);
            for call in choice.delta.tool_calls.unwrap_or_default() {
                let index = call.index as usize;
                if let Some(function) = call.function {
                    names.extend(function.name);
                    arguments[index].push_str(function.arguments.as_deref().unwrap_or_default());
                }
            }
        }
    }
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_eq!(
        serde_json::from_str::<Value>(&arguments[0]).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(serde_json::from_str::<Value>(&arguments[1]).unwrap(), json!({"timezone": "America/Los_Angeles"}));
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    assert_eq!(usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((592, 89)));

    let body = upstream.only_request().json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["tools"][0]["name"], "get_weather");
    assert_eq!(body["tools"][0]["input_schema"]["properties"]["location"]["type"], "string");
    gateway.shutdown().await;
}

#[tokio::test]
async fn plain_tool_calls_through_the_anthropic_adapter() {
    let upstream = MockUpstream::start(json_reply(&fixture("message_tool_use.json"))).await;
    let gateway = gateway_for(&upstream).await;
    let client = support::openai(&gateway, None);
    let response = client.chat().create(chat("claude", "weather?")).await.expect("chat succeeds");
    let choice = &response.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.as_ref().expect("tool calls");
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else { panic!("expected a function call") };
    assert_eq!(call.id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(serde_json::from_str::<Value>(&call.function.arguments).unwrap()["unit"], "celsius");
    gateway.shutdown().await;
}

#[tokio::test]
async fn malformed_upstream_events_end_with_a_clean_error_event() {
    let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\ndata: {oops\n\n";
    let upstream = MockUpstream::start(Behavior::Chunks(vec![Bytes::from(events)])).await;
    let gateway = gateway_for(&upstream).await;
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .json(&json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let text = support::read_sse(response).await;
    let events = support::sse_events(&text);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{text}");
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("last event is JSON");
    assert!(last["error"]["message"].as_str().unwrap().contains("malformed Anthropic stream"), "{last}");
    assert_eq!(last["error"]["code"], "upstream_error");

    upstream.set(Behavior::Chunks(vec![Bytes::from(fixture("stream_error.sse"))]));
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .json(&json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("response");
    let text = support::read_sse(response).await;
    assert!(text.contains("Overloaded (overloaded_error)") && !text.contains("[DONE]"), "{text}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn anthropic_errors_keep_their_status_and_message() {
    let upstream = MockUpstream::start(Behavior::reply(400, fixture("error_invalid_request.json"))).await;
    let gateway = gateway_for(&upstream).await;
    let post = || {
        support::http()
            .post(format!("{}/chat/completions", support::base_url(&gateway)))
            .json(&json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let (status, _, body) = support::body_json(post().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("roles must alternate"), "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    upstream.set(Behavior::reply(529, fixture("error_overloaded.json")));
    let (status, _, body) = support::body_json(post().await.unwrap()).await;
    assert_eq!(status, 502, "5xx answers become 502");
    assert!(body["error"]["message"].as_str().unwrap().contains("Overloaded"), "{body}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn unsupported_requests_are_refused_before_anything_is_sent() {
    let upstream = MockUpstream::start(json_reply(&fixture("message_text.json"))).await;
    let gateway = gateway_for(&upstream).await;
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .json(&json!({"model": "claude", "n": 3, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "n");
    assert_eq!(body["error"]["code"], "unsupported_parameter");
    let response = support::http()
        .post(format!("{}/embeddings", support::base_url(&gateway)))
        .json(&json!({"model": "claude", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn azure_uses_deployment_urls_api_version_and_api_key() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = gateway_for(&upstream).await;
    let client = support::openai(&gateway, None);
    let response = client.chat().create(chat("azure", "hello")).await.expect("chat succeeds");
    assert!(!response.choices[0].message.content.as_deref().unwrap_or_default().is_empty());

    let seen = upstream.only_request();
    assert_eq!(seen.path, "/openai/deployments/gpt4o-deploy/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("azure-secret"));
    assert_eq!(seen.header("x-ms-useragent"), Some("weir-test"));
    assert!(seen.header("authorization").is_none());
    let body = seen.json();
    assert_eq!(body["max_tokens"], 64, "the target's params default is spliced in");
    assert_eq!(body["model"], "gpt4o-deploy");

    let response = support::http()
        .post(format!("{}/embeddings", support::base_url(&gateway)))
        .json(&json!({"model": "azure", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.requests()[1].path, "/openai/deployments/gpt4o-deploy/embeddings");
    gateway.shutdown().await;
}

#[test]
fn params_and_adapter_backends_are_validated_with_positions() {
    let yaml = "\
backends:
  claude: { kind: anthropic, base_url: https://api.anthropic.com }
  az: { kind: azure, base_url: https://x.openai.azure.com }
models:
  m:
    targets:
      - { backend: claude, model: c, params: { temperature: 3, stream: true } }
    fallbacks:
      - { backend: claude, model: c, params: [1] }
auth: { mode: none }
";
    let err = weir::config::load_str(yaml, "w.yaml", &|_| None).expect_err("invalid");
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "w.yaml:3:3: azure backend `az` needs `api_version` (such as 2024-10-21)",
            "w.yaml:7:61: `params.temperature` must be a number from 0 to 2",
            "w.yaml:7:64: `stream` comes from the request and cannot be a default in `params`",
            "w.yaml:9:46: `params` must be a mapping of request fields, such as { max_tokens: 1024 }",
        ]
    );
    let valid = yaml
        .replace("temperature: 3, stream: true", "temperature: 0.5, top_k: 40")
        .replace("params: [1]", "params: {}");
    let valid = valid.replace(
        "base_url: https://x.openai.azure.com",
        "base_url: https://x.openai.azure.com, api_version: 2024-10-21",
    );
    let config = weir::config::load_str(&valid, "w.yaml", &|_| None).expect("valid");
    assert_eq!(config.models["m"].targets[0].params, object(json!({"temperature": 0.5, "top_k": 40})));
}
