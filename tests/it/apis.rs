//! The Responses API (`/v1/responses`) and the Anthropic Messages API (`/v1/messages`):
//! the OpenAI SDK's Responses client and raw Messages requests over loopback, against a
//! translated backend (an OpenAI-compatible mock) and a native one (an Anthropic-shaped
//! mock), with every feature of the request path on them.

use std::path::PathBuf;

use async_openai::types::responses::{CreateResponse, OutputItem, ResponseStreamEvent};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY};
use crate::telemetry::otlp::{Receiver, attr};

const ANTHROPIC_STREAM: &[&str] = &[
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_native\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-up\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":300,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi there\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

/// `up` (OpenAI-compatible) and `claude` (Anthropic) backends; `chat` on `up`, `claude` on
/// `claude` falling back to `up`; `extra` holds more YAML under `models:`.
fn yaml(up: &str, claude: &str, extra_models: &str, extra: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}
backends:
  up: {{ kind: openai, base_url: {up}, api_key: sk-up, timeouts: {{ first_byte: 2s, idle: 2s }} }}
  claude: {{ kind: anthropic, base_url: {claude}, api_key: sk-ant, timeouts: {{ first_byte: 2s, idle: 2s }} }}
models:
  chat: {{ targets: [ {{ backend: up, model: upstream-chat }} ] }}
  claude:
    targets: [ {{ backend: claude, model: claude-up }} ]
    fallbacks: [ {{ backend: up, model: upstream-chat }} ]
{extra_models}
keys:
  - {{ name: team, key: {team} }}
  - {{ name: other, key: {other} }}
auth: {{ mode: keys }}
{extra}
"#,
        team = weir::auth::hash_key(TEAM_KEY),
        other = weir::auth::hash_key(ALL_KEY),
    )
}

/// POSTs `body`: to the Messages API as Anthropic's SDK does (`x-api-key`,
/// `anthropic-version`), to anything else with a bearer token.
async fn post(gateway: &weir::Gateway, path: &str, key: &str, body: &Value) -> reqwest::Response {
    let request = support::http().post(format!("{}{path}", support::base_url(gateway))).json(body);
    let request = match path.starts_with("/messages") {
        true => request.header("x-api-key", key).header("anthropic-version", "2023-06-01"),
        false => request.bearer_auth(key),
    };
    request.send().await.expect("request reaches weir")
}

fn request(body: Value) -> CreateResponse {
    serde_json::from_value(body).expect("a valid CreateResponse")
}

/// Ids and times weir makes up, replaced so answers compare with golden files.
fn normalised(text: &str) -> String {
    let ids = regex::Regex::new(r"(resp|msg|fc)_[0-9a-f]{32}").unwrap();
    let times = regex::Regex::new(r#""(created_at|completed_at|input_tokens)":\d+"#).unwrap();
    times.replace_all(&ids.replace_all(text, "${1}_ID"), "\"$1\":0").into_owned()
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/apis").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(actual, want, "golden file {name} differs (UPDATE_GOLDEN=1 rewrites it)");
}

fn event_names(sse: &str) -> Vec<&str> {
    sse.lines().filter_map(|l| l.strip_prefix("event: ")).collect()
}

// === Responses API ===

#[tokio::test]
async fn the_sdk_creates_streams_and_continues_responses_on_a_translated_backend() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), "", "")).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));

    let plain = client.responses().create(request(json!({"model": "chat", "input": "say hello"}))).await.unwrap();
    assert!(plain.output_text().is_some_and(|t| !t.is_empty()));
    let usage = plain.usage.clone().unwrap();
    assert!(usage.input_tokens > 0 && usage.total_tokens == usage.input_tokens + usage.output_tokens);
    let sent = upstream.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.json()["messages"], json!([{"role": "user", "content": "say hello"}]));

    let mut stream =
        client.responses().create_stream(request(json!({"model": "chat", "input": "say hello"}))).await.unwrap();
    let mut kinds = Vec::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        kinds.push(serde_json::to_value(&event).unwrap()["type"].as_str().unwrap_or_default().to_owned());
        if let ResponseStreamEvent::ResponseCompleted(done) = event {
            completed = Some(done.response);
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("response.created"));
    assert!(kinds.iter().any(|k| k == "response.output_text.delta"));
    let completed = completed.expect("response.completed");
    assert_eq!(completed.output_text(), plain.output_text(), "the mock answers a prompt the same way");

    // A function call, its output sent back with previous_response_id.
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let first = client
        .responses()
        .create(request(json!({"model": "chat", "input": "weather in Oslo?", "tools": tools})))
        .await
        .unwrap();
    let Some(OutputItem::FunctionCall(call)) = first.output.first() else { panic!("a function call: {first:?}") };
    assert_eq!(call.name, "get_weather");
    let follow_up = json!({
        "model": "chat",
        "previous_response_id": first.id,
        "input": [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        "tools": tools,
    });
    let second = client.responses().create(request(follow_up)).await.unwrap();
    assert_eq!(second.previous_response_id.as_deref(), Some(first.id.as_str()));
    let sent = upstream.requests().pop().unwrap().json();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[0], json!({"role": "user", "content": "weather in Oslo?"}));
    assert_eq!(messages[1]["tool_calls"][0]["id"], json!(call.call_id));
    assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}));

    // Stored responses belong to their key.
    assert_eq!(client.responses().retrieve(&second.id).await.unwrap().id, second.id);
    let other = support::openai(&gateway, Some(ALL_KEY));
    assert!(other.responses().retrieve(&second.id).await.is_err(), "another key gets a 404");
    let response = support::http()
        .get(format!("{}/responses/{}", support::base_url(&gateway), second.id))
        .bearer_auth(ALL_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(client.responses().delete(&second.id).await.unwrap().deleted);
    assert!(client.responses().retrieve(&second.id).await.is_err());
    let unknown = json!({"model": "chat", "input": "x", "previous_response_id": "resp_gone"});
    let (status, _, body) = support::body_json(post(&gateway, "/responses", TEAM_KEY, &unknown).await).await;
    assert_eq!((status.as_u16(), body["error"]["param"].as_str()), (404, Some("previous_response_id")));
}

#[tokio::test]
async fn stored_responses_in_redis_are_continued_by_any_replica() {
    let Some(redis) = crate::cache::RedisGuard::start() else { return };
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let state = format!("state: {{ store: \"redis://127.0.0.1:{}/0\", responses_ttl: 1h }}", redis.port);
    let config = yaml(&upstream.url(), &upstream.url(), "", &state);
    let (a, b) = (support::start(&config).await, support::start(&config).await);
    let first = support::openai(&a, Some(TEAM_KEY))
        .responses()
        .create(request(json!({"model": "chat", "input": "remember this"})))
        .await
        .unwrap();
    let on_b = support::openai(&b, Some(TEAM_KEY));
    let mut found = None;
    // The store is written off the request task: give it a moment.
    for _ in 0..50 {
        if let Ok(stored) = on_b.responses().retrieve(&first.id).await {
            found = Some(stored);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(found.expect("replica b reads what replica a stored").id, first.id);
    let follow_up = json!({"model": "chat", "input": "and now?", "previous_response_id": first.id});
    on_b.responses().create(request(follow_up)).await.unwrap();
    let sent = upstream.requests().pop().unwrap().json();
    assert_eq!(sent["messages"][0], json!({"role": "user", "content": "remember this"}));
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    assert!(support::openai(&b, Some(ALL_KEY)).responses().retrieve(&first.id).await.is_err(), "another key: 404");
    assert!(on_b.responses().delete(&first.id).await.unwrap().deleted);
    assert!(support::openai(&a, Some(TEAM_KEY)).responses().retrieve(&first.id).await.is_err());
}

#[tokio::test]
async fn responses_pass_through_to_a_native_backend_and_are_continued_by_weir() {
    let answer = json!({"id": "resp_upstream1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-up",
        "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "native hello", "annotations": []}]}],
        "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11}});
    let openai = MockUpstream::start(Behavior::reply(200, answer.to_string())).await;
    let models = "  native: { targets: [ { backend: oai, model: gpt-up } ] }";
    let config = yaml(&openai.url(), &openai.url(), models, "").replace(
        "backends:\n",
        &format!("backends:\n  oai: {{ kind: openai, base_url: {}, responses: native }}\n", openai.url()),
    );
    let gateway = support::start(&config).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));

    let body = json!({"model": "native", "input": "hi", "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"]});
    let (status, _, got) = support::body_json(post(&gateway, "/responses", TEAM_KEY, &body).await).await;
    assert_eq!(status, 200);
    assert_eq!(got, answer, "the upstream's answer, untouched");
    let sent = openai.only_request();
    assert_eq!(sent.path, "/v1/responses");
    let mut expected = body.clone();
    expected["model"] = json!("gpt-up");
    assert_eq!(sent.json(), expected);

    // weir keeps it too, so a later request (to any backend) can continue it.
    let mut stored = None;
    for _ in 0..50 {
        if let Ok(found) = client.responses().retrieve("resp_upstream1").await {
            stored = Some(found);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stored.expect("stored under the upstream's id").output_text().as_deref(), Some("native hello"));
    let follow_up = json!({"model": "native", "input": "again", "previous_response_id": "resp_upstream1"});
    let (status, _, _) = support::body_json(post(&gateway, "/responses", TEAM_KEY, &follow_up).await).await;
    assert_eq!(status, 200);
    let sent = openai.requests().pop().unwrap().json();
    assert!(sent.get("previous_response_id").is_none(), "the upstream never saw weir's conversation: {sent}");
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input.len(), 3, "{sent}");
    assert_eq!(input[1]["id"], "msg_up");
    assert_eq!(input[2]["content"], "again");
}

#[tokio::test]
async fn responses_errors_are_openai_shaped_with_the_field_at_fault() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), "", "")).await;
    let bad = json!({"model": "chat", "input": "x", "tools": [{"type": "web_search"}]});
    let (status, _, body) = support::body_json(post(&gateway, "/responses", TEAM_KEY, &bad).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "tools[0].type");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(upstream.requests().is_empty());
}

// === Messages API ===

#[tokio::test]
async fn messages_translated_for_a_chat_backend_match_the_golden_files() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), "", "")).await;
    let tools = json!([{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);

    let plain = json!({"model": "chat", "max_tokens": 64, "system": "be brief", "messages": [{"role": "user", "content": "say hello"}]});
    let (status, _, body) = support::body_json(post(&gateway, "/messages", TEAM_KEY, &plain).await).await;
    assert_eq!(status, 200);
    golden("it_messages_plain.json", &normalised(&serde_json::to_string_pretty(&body).unwrap()));

    let stream = json!({"model": "chat", "max_tokens": 64, "messages": [{"role": "user", "content": "say hello"}], "stream": true});
    let response = post(&gateway, "/messages", TEAM_KEY, &stream).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let sse = support::read_sse(response).await;
    golden("it_messages_stream.sse", &normalised(&sse));

    // Tool use, then its result sent back.
    let ask = json!({"model": "chat", "max_tokens": 64, "tools": tools, "messages": [{"role": "user", "content": "weather in Oslo?"}]});
    let (_, _, first) = support::body_json(post(&gateway, "/messages", TEAM_KEY, &ask).await).await;
    assert_eq!(first["stop_reason"], "tool_use");
    let tool_use = first["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").unwrap().clone();
    golden("it_messages_tool_use.json", &normalised(&serde_json::to_string_pretty(&first).unwrap()));
    let answer = json!({"model": "chat", "max_tokens": 64, "tools": tools, "messages": [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sunny"}]},
    ]});
    let (status, _, _) = support::body_json(post(&gateway, "/messages", TEAM_KEY, &answer).await).await;
    assert_eq!(status, 200);
    let sent = upstream.requests().pop().unwrap().json();
    assert_eq!(sent["messages"][2], json!({"role": "tool", "tool_call_id": tool_use["id"], "content": "sunny"}));

    let count = json!({"model": "chat", "messages": [{"role": "user", "content": "how many tokens is this"}]});
    let (status, _, body) = support::body_json(post(&gateway, "/messages/count_tokens", TEAM_KEY, &count).await).await;
    assert_eq!(status, 200);
    assert!(body["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn messages_go_to_anthropic_backends_natively() {
    let claude =
        MockUpstream::start(Behavior::Chunks(ANTHROPIC_STREAM.iter().map(|c| Bytes::from(*c)).collect())).await;
    let up = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&up.url(), &claude.url(), "", "")).await;
    let body = json!({"model": "claude", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}], "thinking": {"type": "enabled", "budget_tokens": 1024}});
    let response = support::http()
        .post(format!("{}/messages", support::base_url(&gateway)))
        .header("x-api-key", TEAM_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-weir-backend"], "claude");
    let sse = support::read_sse(response).await;
    assert_eq!(sse, ANTHROPIC_STREAM.concat(), "the native answer passes untouched");
    let sent = claude.only_request();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant"));
    assert_eq!(sent.header("anthropic-beta"), Some("prompt-caching-2024-07-31"));
    let mut expected = body.clone();
    expected["model"] = json!("claude-up");
    assert_eq!(sent.json(), expected, "nothing lost: cache_control and thinking reach Anthropic");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn messages_errors_are_anthropic_shaped_and_keys_come_in_x_api_key() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), "", "")).await;
    let body = json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let cases = [
        ("sk-wrong", body.clone(), 401, "authentication_error"),
        (
            TEAM_KEY,
            json!({"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "not_found_error",
        ),
        (
            TEAM_KEY,
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
    ];
    for (key, body, status, kind) in cases {
        let (got, _, error) = support::body_json(post(&gateway, "/messages", key, &body).await).await;
        assert_eq!(
            (got.as_u16(), error["type"].as_str(), error["error"]["type"].as_str()),
            (status, Some("error"), Some(kind))
        );
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _, _) = support::body_json(post(&gateway, "/messages", TEAM_KEY, &body).await).await;
    assert_eq!(status, 200, "x-api-key is a key like a bearer token");
}

// === every feature on both endpoints ===

fn both(model: &str) -> [(&'static str, Value); 2] {
    [
        ("/responses", json!({"model": model, "input": "feature check", "user": "alice"})),
        (
            "/messages",
            json!({"model": model, "max_tokens": 32, "metadata": {"user_id": "alice"}, "messages": [{"role": "user", "content": "feature check"}]}),
        ),
    ]
}

#[tokio::test]
async fn cache_hits_keyed_per_endpoint_serve_json_and_streams() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let models = "  cached: { targets: [ { backend: up, model: upstream-chat } ], cache: { ttl: 1m } }";
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), models, "")).await;
    for (path, body) in both("cached") {
        let first = post(&gateway, path, TEAM_KEY, &body).await;
        assert_eq!(first.headers()["x-weir-cache"], "miss", "{path}");
        let (_, _, first) = support::body_json(first).await;
        let hit = post(&gateway, path, TEAM_KEY, &body).await;
        assert_eq!(hit.headers()["x-weir-cache"], "hit", "{path}");
        let (_, _, hit) = support::body_json(hit).await;
        assert_eq!(hit, first, "{path}");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let response = post(&gateway, path, TEAM_KEY, &streamed).await;
        assert_eq!(response.headers()["x-weir-cache"], "hit", "{path}: a stream from the JSON entry");
        let sse = support::read_sse(response).await;
        let last = event_names(&sse).last().copied();
        assert!(matches!(last, Some("response.completed" | "message_stop")), "{path}: {sse}");
    }
    assert_eq!(upstream.requests().len(), 2, "one upstream call per endpoint");
}

#[tokio::test]
async fn limits_refuse_in_each_apis_shape() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let mut config = yaml(&upstream.url(), &upstream.url(), "", "");
    config = config.replace(
        &format!("  - {{ name: team, key: {} }}", weir::auth::hash_key(TEAM_KEY)),
        &format!("  - {{ name: team, key: {}, rate: {{ rpm: 2 }} }}", weir::auth::hash_key(TEAM_KEY)),
    );
    let gateway = support::start(&config).await;
    let [(responses, responses_body), (messages, messages_body)] = both("chat");
    assert_eq!(post(&gateway, responses, TEAM_KEY, &responses_body).await.status(), 200);
    assert_eq!(post(&gateway, messages, TEAM_KEY, &messages_body).await.status(), 200);
    let refused = post(&gateway, responses, TEAM_KEY, &responses_body).await;
    assert!(refused.headers().contains_key("retry-after"));
    let (status, _, body) = support::body_json(refused).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    let (status, _, body) = support::body_json(post(&gateway, messages, TEAM_KEY, &messages_body).await).await;
    assert_eq!((status.as_u16(), body["error"]["type"].as_str()), (429, Some("rate_limit_error")));
}

#[tokio::test]
async fn sticky_splits_follow_the_apis_user_fields() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let models = "  split:\n    targets: [ { backend: up, model: a, variant: a, weight: 50 }, { backend: up, model: b, variant: b, weight: 50 } ]\n    sticky: user";
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), models, "")).await;
    for (path, body) in both("split") {
        let mut variants = std::collections::HashSet::new();
        for _ in 0..8 {
            let response = post(&gateway, path, TEAM_KEY, &body).await;
            assert_eq!(response.status(), 200);
            variants.insert(response.headers()["x-weir-variant"].to_str().unwrap().to_owned());
        }
        assert_eq!(variants.len(), 1, "{path}: one user, one variant");
    }
}

#[tokio::test]
async fn a_messages_request_falls_back_from_anthropic_to_an_openai_backend() {
    let claude = MockUpstream::start(Behavior::error(500, "overloaded")).await;
    let up = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&up.url(), &claude.url(), "", "")).await;
    let [_, (path, body)] = both("claude");
    let response = post(&gateway, path, TEAM_KEY, &body).await;
    if !response.headers().contains_key("x-weir-backend") {
        panic!("no backend answered: {}", response.text().await.unwrap());
    }
    assert_eq!(response.headers()["x-weir-backend"], "up");
    let (status, _, message) = support::body_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(message["type"], "message", "the chat answer comes back as a message: {message}");
    assert_eq!(claude.requests().len(), 1);
    assert_eq!(up.only_request().path, "/v1/chat/completions");
    // And the Responses API, which reaches Anthropic as chat, translated twice.
    let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": [{"type": "text", "text": "from claude"}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": {"input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 2}});
    claude.set(Behavior::reply(200, message.to_string()));
    let [(path, body), _] = both("claude");
    let response = post(&gateway, path, TEAM_KEY, &body).await;
    assert_eq!(response.headers()["x-weir-backend"], "claude");
    let (status, _, response) = support::body_json(response).await;
    assert_eq!((status.as_u16(), response["object"].as_str()), (200, Some("response")));
    assert_eq!(response["output"][0]["content"][0]["text"], "from claude");
    assert_eq!(
        response["usage"]["input_tokens_details"]["cached_tokens"], 7,
        "cached tokens survive both translations"
    );
}

#[tokio::test]
async fn dataset_records_and_spans_name_the_endpoint() {
    let receiver = Receiver::start().await;
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "datasets: [ {{ name: all, dir: {} }} ]\ntelemetry: {{ otlp: {{ endpoint: {}, protocol: http }} }}",
        dir.path().display(),
        receiver.url()
    );
    let gateway = support::start(&yaml(&upstream.url(), &upstream.url(), "", &extra)).await;
    let mut ids = Vec::new();
    for (path, body) in both("chat") {
        let response = post(&gateway, path, TEAM_KEY, &body).await;
        ids.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let metrics = support::http().get(format!("http://{}/metrics", gateway.admin_addr())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for endpoint in ["responses", "messages"] {
        let series = format!(
            r#"weir_requests_total{{model="chat",backend="up",variant="up",status="200",cache="bypass",endpoint="{endpoint}"}} 1"#
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    gateway.shutdown().await;
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    for (id, (endpoint, shape)) in ids.iter().zip([("responses", "response"), ("messages", "message")]) {
        let record =
            lines.iter().find(|l| l["request_id"] == id.as_str()).unwrap_or_else(|| panic!("{id}: {lines:#?}"));
        assert_eq!(record["endpoint"], endpoint);
        let kind = record["response"].get("object").or_else(|| record["response"].get("type"));
        assert_eq!(kind.and_then(Value::as_str), Some(shape), "{record}");
        assert!(record["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{record}");
    }
    let spans = receiver.spans();
    for name in ["chat chat"] {
        let servers: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(servers.len(), 2, "{spans:#?}");
        for span in servers {
            assert_eq!(attr(span, "gen_ai.operation.name").as_deref(), Some("chat"));
            assert!(attr(span, "gen_ai.usage.input_tokens").is_some());
        }
    }
}
