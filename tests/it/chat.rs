//! The happy path through `kind: openai` to a mock upstream, driven by the OpenAI SDK, and
//! the built-in `mock` backend.

use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools, CompletionFinishReason,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FinishReason, FunctionObject, Prompt,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EmbeddingInput};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use weir::backends::mock::Answer;
use weir::wire::Endpoint;

use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY, UPSTREAM_KEY};

fn chat_request(model: &str, prompt: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages(vec![
            ChatCompletionRequestSystemMessage::from("You are terse.").into(),
            ChatCompletionRequestUserMessage::from(prompt).into(),
        ])
        .temperature(0.5)
        .build()
        .expect("request builds")
}

/// What the upstream answered to `request`, recomputed from the recorded request body.
fn upstream_answer(endpoint: Endpoint, request: &Value) -> Value {
    let answer = Answer::plan(endpoint, request).expect("mock plans an answer");
    serde_json::from_str(&answer.to_json()).expect("answer is JSON")
}

#[tokio::test]
async fn plain_chat_maps_the_model_and_sends_the_backend_key() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));

    let response = client.chat().create(chat_request("chat", "say hello")).await.expect("chat succeeds");

    let seen = upstream.only_request();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, "/v1/chat/completions");
    let auth = seen.header("authorization").expect("upstream got an Authorization header");
    assert_eq!(auth, format!("Bearer {UPSTREAM_KEY}"), "the backend's api_key goes upstream");
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(!value.contains(TEAM_KEY), "client key leaked upstream in `{name}`");
    }
    let body = seen.json();
    assert_eq!(body["model"], "upstream-chat", "public name mapped to the target's model");
    assert_eq!(body["messages"][1]["content"], "say hello");
    assert_eq!(body["temperature"], 0.5);

    let expected = upstream_answer(Endpoint::ChatCompletions, &body);
    assert_eq!(response.choices.len(), 1);
    let choice = &response.choices[0];
    assert_eq!(choice.message.content.as_deref(), expected["choices"][0]["message"]["content"].as_str());
    assert!(!choice.message.content.as_deref().unwrap_or_default().is_empty());
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    assert_eq!(response.id, expected["id"].as_str().expect("id"));
    let usage = response.usage.expect("usage passes through");
    assert_eq!(u64::from(usage.total_tokens), expected["usage"]["total_tokens"].as_u64().expect("total"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_body_reaches_the_upstream_byte_identical_but_for_the_model() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    // Odd spacing, key order, escapes and number forms that a re-serialiser would change.
    let template = "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"h\\u00e9llo \u{1F600} \\\"q\\\"\"} ],\n  \"model\"  :  MODEL ,\"temperature\":0.50,\"top_p\":1e0,\"metadata\":{\"z\":\"1\",\"a\":\"2\"},\"x_vendor\":[1,2.50,{}]}";
    let sent = template.replace("MODEL", "\"chat\"");

    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(TEAM_KEY)
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);

    let seen = upstream.only_request();
    let expected = template.replace("MODEL", "\"upstream-chat\"");
    assert_eq!(
        std::str::from_utf8(&seen.body).expect("UTF-8"),
        expected,
        "only the model value may change on the way upstream"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn streaming_chat_arrives_incrementally_and_assembles() {
    let gap = Duration::from_millis(100);
    let upstream = MockUpstream::start(Behavior::paced(gap)).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));
    let mut request = chat_request("chat", "stream me a short answer");
    request.max_completion_tokens = Some(6);

    let started = Instant::now();
    let mut stream = client.chat().create_stream(request).await.expect("stream starts");
    let mut arrivals = Vec::new();
    let mut content = String::new();
    let mut finish = None;
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        let chunk = chunk.expect("chunk parses");
        arrivals.push(started.elapsed());
        assert_eq!(chunk.model, "upstream-chat");
        for choice in &chunk.choices {
            assert_eq!(choice.index, 0);
            if let Some(piece) = &choice.delta.content {
                content.push_str(piece);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }

    let body = upstream.only_request().json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "upstream-chat");
    let expected = upstream_answer(Endpoint::ChatCompletions, &body);
    assert_eq!(Some(content.as_str()), expected["choices"][0]["message"]["content"].as_str());
    assert_eq!(finish, Some(FinishReason::Length), "max_completion_tokens cut the answer");
    // role chunk + 6 words + finish chunk, 100 ms apart: a buffering proxy would deliver
    // them together at the end.
    assert!(arrivals.len() >= 8, "expected at least 8 chunks, got {}", arrivals.len());
    let first = arrivals[0];
    let last = *arrivals.last().expect("chunks");
    assert!(
        last.saturating_sub(first) >= Duration::from_millis(400),
        "chunks were not streamed incrementally: first at {first:?}, last at {last:?}"
    );
    assert_eq!(upstream.completed(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn tool_calls_come_back_parsed() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));
    let tool = ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: Some(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            })),
            strict: None,
        },
    });
    let mut request = chat_request("chat", "weather in Paris?");
    request.tools = Some(vec![tool]);

    let response = client.chat().create(request).await.expect("chat with tools succeeds");

    let choice = &response.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.as_ref().expect("tool calls");
    assert_eq!(calls.len(), 1);
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else { panic!("expected a function call") };
    assert_eq!(call.function.name, "get_weather");
    let arguments: Value = serde_json::from_str(&call.function.arguments).expect("arguments are JSON");
    assert_eq!(arguments, json!({"city": "mock", "days": 0}));
    let body = upstream.only_request().json();
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(body["tools"][0]["type"], "function");
    gateway.shutdown().await;
}

#[tokio::test]
async fn n_two_gives_two_choices() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));
    let mut request = chat_request("chat", "two takes please");
    request.n = Some(2);

    let response = client.chat().create(request).await.expect("n=2 succeeds");

    assert_eq!(response.choices.len(), 2);
    let indexes: Vec<u32> = response.choices.iter().map(|c| c.index).collect();
    assert_eq!(indexes, [0, 1]);
    assert!(response.choices.iter().all(|c| c.message.content.as_deref().is_some_and(|s| !s.is_empty())));
    assert_eq!(upstream.only_request().json()["n"], 2);
    gateway.shutdown().await;
}

#[tokio::test]
async fn legacy_completions_pass_through() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));
    let request = CreateCompletionRequestArgs::default()
        .model("chat")
        .prompt(Prompt::String("Once upon a time".into()))
        .max_tokens(5u32)
        .build()
        .expect("request builds");

    let response = client.completions().create(request).await.expect("completion succeeds");

    let seen = upstream.only_request();
    assert_eq!(seen.path, "/v1/completions");
    assert_eq!(seen.json()["model"], "upstream-chat");
    assert_eq!(seen.json()["prompt"], "Once upon a time");
    assert_eq!(response.choices.len(), 1);
    assert_eq!(response.choices[0].text.split_whitespace().count(), 5);
    assert_eq!(response.choices[0].finish_reason, Some(CompletionFinishReason::Length));
    gateway.shutdown().await;
}

#[tokio::test]
async fn embeddings_pass_through() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(ALL_KEY));
    let request = CreateEmbeddingRequestArgs::default()
        .model("embed")
        .input(EmbeddingInput::StringArray(vec!["first".into(), "second".into()]))
        .build()
        .expect("request builds");

    let response = client.embeddings().create(request).await.expect("embeddings succeed");

    let seen = upstream.only_request();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.json()["model"], "upstream-embed");
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    assert_eq!(response.data.len(), 2);
    assert_eq!(response.data[1].index, 1);
    assert_eq!(response.data[0].embedding.len(), 16);
    assert_ne!(response.data[0].embedding, response.data[1].embedding);
    gateway.shutdown().await;
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;

    let team = support::openai(&gateway, Some(TEAM_KEY)).models().list().await.expect("team lists models");
    let all = support::openai(&gateway, Some(ALL_KEY)).models().list().await.expect("all lists models");

    let ids = |list: &async_openai::types::models::ListModelResponse| {
        let mut ids: Vec<String> = list.data.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&team), ["chat"]);
    assert_eq!(ids(&all), ["chat", "embed", "local"]);
    assert!(upstream.requests().is_empty(), "listing models does not call the backend");
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_builtin_mock_backend_serves_chat_streams_and_embeddings() {
    // No upstream is involved, but the standard fixture needs a URL for backend `up`.
    let upstream = MockUpstream::start(Behavior::Close).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(ALL_KEY));

    let response = client.chat().create(chat_request("local", "hello mock")).await.expect("mock chat");
    assert_eq!(response.model, "mock-1", "the mock answers with the upstream model name");
    let content = response.choices[0].message.content.clone().expect("content");
    assert!(content.split_whitespace().count() >= 8);
    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));

    let mut stream = client.chat().create_stream(chat_request("local", "hello mock")).await.expect("mock stream");
    let mut streamed = String::new();
    let mut finish = None;
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        for choice in chunk.expect("chunk parses").choices {
            streamed.push_str(choice.delta.content.as_deref().unwrap_or_default());
            finish = choice.finish_reason.or(finish);
        }
    }
    assert_eq!(streamed, content, "same prompt, same words, streamed or not");
    assert_eq!(finish, Some(FinishReason::Stop));

    let request = CreateEmbeddingRequestArgs::default()
        .model("local")
        .input(EmbeddingInput::String("embed me".into()))
        .build()
        .expect("request builds");
    let embeddings = client.embeddings().create(request).await.expect("mock embeddings");
    assert_eq!(embeddings.data.len(), 1);
    let norm: f32 = embeddings.data[0].embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "mock embeddings are unit vectors, norm {norm}");

    assert!(upstream.requests().is_empty());
    gateway.shutdown().await;
}

#[tokio::test]
async fn stream_usage_is_passed_on_when_asked_for() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));
    let mut request = chat_request("chat", "count my tokens");
    request.stream_options = Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });

    let mut stream = client.chat().create_stream(request).await.expect("stream starts");
    let mut usage = None;
    let mut words = 0u32;
    while let Some(chunk) = tokio::time::timeout(support::DEADLINE, stream.next()).await.expect("chunk in time") {
        let chunk = chunk.expect("chunk parses");
        words +=
            chunk.choices.iter().filter(|c| c.delta.content.as_deref().is_some_and(|s| !s.is_empty())).count() as u32;
        if chunk.usage.is_some() {
            assert!(chunk.choices.is_empty(), "usage rides on a final chunk without choices");
            usage = chunk.usage;
        }
    }
    let usage = usage.expect("a usage chunk");
    assert_eq!(usage.completion_tokens, words, "the mock counts one token per word");
    assert_eq!(upstream.only_request().json()["stream_options"]["include_usage"], true);
    gateway.shutdown().await;
}

#[tokio::test]
async fn backend_headers_are_sent_upstream() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let yaml = support::standard_yaml(&upstream.url(), support::Timeouts::default()).replace(
        "    api_key: sk-upstream-secret\n",
        "    api_key: sk-upstream-secret\n    headers: { OpenAI-Organization: org-weir, X-Team: search }\n",
    );
    let config = support::config(&yaml);
    assert_eq!(config.backends["up"].headers.len(), 2, "headers were read");
    let gateway = support::start_config(config).await;

    support::openai(&gateway, Some(TEAM_KEY)).chat().create(chat_request("chat", "hi")).await.expect("chat");

    let seen = upstream.only_request();
    assert_eq!(seen.header("openai-organization"), Some("org-weir"));
    assert_eq!(seen.header("x-team"), Some("search"));
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));
    gateway.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer() {
    let upstream = MockUpstream::start(Behavior::paced(Duration::from_millis(5))).await;
    let gateway = support::standard(&upstream).await;
    let client = support::openai(&gateway, Some(TEAM_KEY));

    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let prompt = format!("question number {i}");
                let request = chat_request("chat", &prompt);
                let content = if i % 2 == 0 {
                    let response = client.chat().create(request).await.expect("chat");
                    response.choices[0].message.content.clone().expect("content")
                } else {
                    let mut stream = client.chat().create_stream(request).await.expect("stream");
                    let mut content = String::new();
                    while let Some(chunk) = stream.next().await {
                        for choice in chunk.expect("chunk").choices {
                            content.push_str(choice.delta.content.as_deref().unwrap_or_default());
                        }
                    }
                    content
                };
                (prompt, content)
            })
        })
        .collect();
    for task in tasks {
        let (prompt, content) = tokio::time::timeout(support::DEADLINE, task).await.expect("in time").expect("task");
        let request = json!({"model": "upstream-chat", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}]});
        let expected = upstream_answer(Endpoint::ChatCompletions, &request);
        assert_eq!(Some(content.as_str()), expected["choices"][0]["message"]["content"].as_str(), "for {prompt}");
    }
    assert_eq!(upstream.requests().len(), 32);
    gateway.shutdown().await;
}
