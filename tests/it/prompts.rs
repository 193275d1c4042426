//! Prompts over loopback: what the upstream receives, each error with its `param`, a split
//! between two prompt versions (shares, records, report and export), `GET /admin/prompts`,
//! and reloads of `prompts_dir` files (an edit served, a broken template rejected).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use async_openai::types::chat::{ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs};
use serde_json::{Value, json};
use weir::Gateway;
use weir::config::ConfigSource;

use crate::support::{self, ALL_KEY, Behavior, MockUpstream, Timeouts};

const ADMIN_TOKEN: &str = "admin-token-for-prompts";

const PROMPTS: &str = r#"prompts:
  support-answer:
    default: v2
    versions:
      v1:
        messages:
          - { role: system, content: "v1: You answer questions about {{ product }}. Be brief." }
          - { role: user, content: "{{ question }}" }
        variables: { product: { default: weir }, question: { required: true } }
      v2:
        messages:
          - role: system
            content: |
              v2: You are the {{ product }} support desk.
              {% for doc in docs %}
              - cite {{ doc }}
              {% endfor %}
          - { role: user, content: "{{ question }}" }
        variables: { product: { default: weir }, question: { required: true }, docs: { default: [] } }
        params: { temperature: 0.2, max_tokens: 50 }
      broken-at-runtime:
        messages: [ { role: system, content: "{% for x in n %}{{ x }}{% endfor %}" } ]
        variables: { n: { default: [] } }
"#;

/// The standard fixture (`chat` → upstream `up`), an admin token, the prompts above, and
/// model `support` split evenly between two versions on the same upstream model.
fn yaml(upstream: &MockUpstream, extra: &str) -> String {
    let standard = support::standard_yaml(&upstream.url(), Timeouts::default())
        .replacen("server:\n", &format!("server:\n  admin_token: {ADMIN_TOKEN}\n"), 1)
        .replacen(
            "models:\n",
            "models:\n  support:\n    experiment: support-prompt\n    targets:\n      \
             - { backend: up, model: upstream-chat, variant: v1, prompt: support-answer@v1, weight: 1 }\n      \
             - { backend: up, model: upstream-chat, variant: v2, prompt: support-answer@v2, weight: 1 }\n",
            1,
        );
    format!("{standard}{PROMPTS}{extra}")
}

async fn chat(gateway: &Gateway, body: Value) -> (u16, Value) {
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .bearer_auth(ALL_KEY)
        .json(&body)
        .send()
        .await
        .expect("request reaches the gateway");
    let (status, _, body) = support::body_json(response).await;
    (status.as_u16(), body)
}

async fn admin(gateway: &Gateway, method: http::Method, path: &str) -> (u16, Value) {
    let request =
        support::http().request(method, format!("http://{}{path}", gateway.admin_addr())).bearer_auth(ADMIN_TOKEN);
    let (status, _, body) = support::body_json(request.send().await.expect("admin request")).await;
    (status.as_u16(), body)
}

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().expect("run weir")
}

#[tokio::test]
async fn the_upstream_gets_the_rendered_messages_then_the_requests_and_never_the_prompt() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream, "")).await;
    let (status, body) = chat(
        &gateway,
        json!({
            "model": "chat",
            "prompt": {"id": "support-answer", "variables": {"question": "How do I rotate a key?", "docs": ["keys.md", "rotation.md"]}},
            "messages": [{"role": "assistant", "content": "Earlier answer"}, {"role": "user", "content": "And then?"}],
            "max_completion_tokens": 7
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = upstream.only_request().json();
    assert!(sent.get("prompt").is_none(), "the prompt field never reaches a backend: {sent}");
    assert_eq!(sent["model"], "upstream-chat");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "v2: You are the weir support desk.\n- cite keys.md\n- cite rotation.md\n"},
            {"role": "user", "content": "How do I rotate a key?"},
            {"role": "assistant", "content": "Earlier answer"},
            {"role": "user", "content": "And then?"}
        ])
    );
    // The version's params fill in what the request left out; the request's own win.
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["max_completion_tokens"], 7);
    assert!(sent.get("max_tokens").is_none(), "max_completion_tokens already sets the limit: {sent}");

    // A named version, and a request with no messages of its own.
    let (status, body) = chat(
        &gateway,
        json!({"model": "chat", "prompt": {"id": "support-answer", "version": "v1", "variables": {"question": "Q?", "product": "Acme"}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = upstream.requests()[1].json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "v1: You answer questions about Acme. Be brief."},
            {"role": "user", "content": "Q?"}
        ])
    );
    assert!(sent.get("temperature").is_none(), "v1 has no params: {sent}");

    // Streamed: usage is still asked for upstream, and the client gets the whole stream.
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({"model": "chat", "stream": true, "prompt": {"id": "support-answer", "variables": {"question": "Q?"}}}))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(response.status(), 200);
    let events = support::sse_events(&support::read_sse(response).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let sent = upstream.requests()[2].json();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert_eq!(sent["messages"][1], json!({"role": "user", "content": "Q?"}));

    // Embeddings to a model are untouched by prompts.
    let response = support::http()
        .post(format!("{}/embeddings", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({"model": "support", "input": "x"}))
        .send()
        .await
        .expect("embeddings");
    assert_eq!(response.status(), 200);
    let sent = upstream.requests()[3].json();
    assert!(sent.get("messages").is_none(), "{sent}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_plain_sdk_client_gets_the_prompt_its_target_fixes() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let extra = "  fixed:\n    default: v1\n    versions:\n      v1: { messages: [ { role: system, content: \"Answer in {{ language }}.\" } ], variables: { language: { default: French } } }\n";
    let config = yaml(&upstream, extra).replacen(
        "models:\n",
        "models:\n  french:\n    targets: [ { backend: up, model: upstream-chat, prompt: fixed@v1 } ]\n",
        1,
    );
    let gateway = support::start(&config).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("french")
        .messages(vec![ChatCompletionRequestUserMessage::from("Hello!").into()])
        .build()
        .expect("request");
    let answer = support::openai(&gateway, Some(ALL_KEY)).chat().create(request).await.expect("answer");
    assert!(answer.choices[0].message.content.is_some());
    let sent = upstream.only_request().json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}])
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn each_prompt_error_is_a_400_naming_its_field_and_nothing_is_sent() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream, "")).await;
    let question = json!({"question": "q"});
    let cases = [
        (json!({"id": "nope", "variables": question}), "prompt.id", "prompt_not_found"),
        (
            json!({"id": "support-answer", "version": "v9", "variables": question}),
            "prompt.version",
            "prompt_version_not_found",
        ),
        (json!({"id": "support-answer", "variables": {}}), "prompt.variables.question", "missing_prompt_variable"),
        (
            json!({"id": "support-answer", "variables": {"question": "q", "colour": "red"}}),
            "prompt.variables.colour",
            "unknown_prompt_variable",
        ),
        (
            json!({"id": "support-answer", "version": "broken-at-runtime", "variables": {"n": 3}}),
            "prompt",
            "prompt_render_error",
        ),
        (json!({"id": 7}), "prompt.id", "invalid_value"),
        (json!({"id": "support-answer", "variables": ["q"]}), "prompt.variables", "invalid_value"),
        (json!("support-answer"), "prompt", "invalid_value"),
    ];
    for (prompt, param, code) in cases {
        let (status, body) = chat(&gateway, json!({"model": "chat", "prompt": prompt})).await;
        assert_eq!(status, 400, "{prompt}: {body}");
        assert_eq!(body["error"]["param"], param, "{prompt}: {body}");
        assert_eq!(body["error"]["code"], code, "{prompt}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Without `prompt`, `messages` is still required.
    let (status, body) = chat(&gateway, json!({"model": "chat"})).await;
    assert_eq!((status, body["error"]["param"].clone()), (400, json!("messages")), "{body}");
    assert!(upstream.requests().is_empty(), "no error reached the upstream");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_split_between_two_versions_sends_each_its_share_and_records_it() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let datasets = format!("datasets:\n  - {{ name: all, dir: {} }}\n", dir.path().display());
    let gateway = support::start(&yaml(&upstream, &datasets)).await;
    const N: usize = 120;
    for i in 0..N {
        let (status, body) = chat(
            &gateway,
            json!({"model": "support", "prompt": {"id": "support-answer", "variables": {"question": format!("q{i}")}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let versions: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.json()["messages"][0]["content"].as_str().expect("system text")[..2].to_owned())
        .collect();
    let v1 = versions.iter().filter(|v| *v == "v1").count();
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    assert_eq!(v1 + v2, N);
    // Even weights: each arm within 6 standard deviations of half.
    assert!((30..=90).contains(&v1), "v1 got {v1} of {N}");

    let (status, listing) = admin(&gateway, http::Method::GET, "/admin/prompts").await;
    assert_eq!(status, 200, "{listing}");
    let prompt = &listing["prompts"][0];
    assert_eq!((prompt["id"].clone(), prompt["default"].clone()), (json!("support-answer"), json!("v2")));
    let hash = prompt["versions"][1]["hash"].as_str().expect("hash");
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{listing}");

    gateway.shutdown().await;
    let records: Vec<Value> = std::fs::read_dir(dir.path())
        .expect("dataset dir")
        .flat_map(|entry| {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
            text.lines().map(|line| serde_json::from_str::<Value>(line).expect("JSON line")).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(records.len(), N);
    for record in &records {
        assert_eq!(record["prompt"]["id"], "support-answer", "{record}");
        assert_eq!(record["prompt"]["version"], record["variant"], "the arm's version is recorded: {record}");
        assert!(record["prompt"]["variables"]["question"].is_string(), "{record}");
        assert_eq!(record["request"]["messages"][0]["role"], "system", "the rendered request: {record}");
        assert!(record["request"].get("prompt").is_none());
    }

    let dir_arg = dir.path().to_str().expect("utf-8 path");
    let report = weir(&["experiment", "report", "--dir", dir_arg, "--prompt", "support-answer", "--format", "json"]);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).expect("report JSON");
    let variants = &report["experiments"][0]["variants"];
    let requests = |name: &str| {
        variants.as_array().into_iter().flatten().find(|v| v["variant"] == name).map(|v| v["requests"].clone())
    };
    assert_eq!(requests("v1"), Some(json!(v1)), "{report}");
    assert_eq!(requests("v2"), Some(json!(v2)), "{report}");

    let export = weir(&["dataset", "export", "--dir", dir_arg, "--format", "eval", "--prompt", "support-answer@v1"]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&export.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), v1);
    assert!(
        lines.iter().all(|l| l["metadata"]["prompt"]["version"] == "v1"
            && l["metadata"]["prompt"]["variables"]["question"].is_string())
    );
    let bad = weir(&["dataset", "export", "--dir", dir_arg, "--format", "eval", "--prompt", "@v1"]);
    assert!(!bad.status.success());
}

/// Writes `path` the way editors save: a temporary file renamed over it.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

const FAQ: &str = "default: v1\nversions:\n  v1:\n    messages: [ { role: system, content: \"FAQ {{ topic }}: first edition\" } ]\n    variables: { topic: { default: all } }\n";

#[tokio::test]
async fn editing_a_prompt_file_changes_the_next_rendering_and_a_broken_one_is_rejected() {
    support::init();
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("prompts")).expect("prompts dir");
    let faq = dir.path().join("prompts").join("faq.yaml");
    std::fs::write(&faq, FAQ).expect("write prompt");
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, format!("{}prompts_dir: prompts\n", yaml(&upstream, ""))).expect("write config");
    let source = ConfigSource::File(config.clone());
    let loaded = source.load().unwrap_or_else(|err| panic!("test config is invalid:\n{err}"));
    let gateway = Gateway::start_from(source, loaded).await.expect("gateway starts");

    let ask = json!({"model": "chat", "prompt": {"id": "faq"}, "messages": [{"role": "user", "content": "hi"}]});
    let system = |upstream: &MockUpstream| {
        upstream.requests().last().map(|r| r.json()["messages"][0]["content"].clone()).unwrap_or_default()
    };
    let (status, body) = chat(&gateway, ask.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system(&upstream), "FAQ all: first edition");
    let (_, before) = admin(&gateway, http::Method::GET, "/admin/prompts").await;

    // An edit is picked up by the watcher: the next requests render the new text.
    rewrite(&faq, &FAQ.replace("first edition", "second edition"));
    let written = Instant::now();
    loop {
        let (status, body) = chat(&gateway, ask.clone()).await;
        assert_eq!(status, 200, "{body}");
        if system(&upstream) == "FAQ all: second edition" {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(3), "the edited prompt was not served within 3 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, after) = admin(&gateway, http::Method::GET, "/admin/prompts").await;
    assert_ne!(before["prompts"][0]["versions"][0]["hash"], after["prompts"][0]["versions"][0]["hash"]);

    // A broken template is rejected, placed in its file; the last good prompts stay served.
    rewrite(&faq, &FAQ.replace("{{ topic }}", "{{ topic "));
    let (status, outcome) = admin(&gateway, http::Method::POST, "/admin/reload").await;
    assert_eq!(status, 400, "{outcome}");
    let text = outcome.to_string();
    assert!(text.contains("faq.yaml:4:") && text.contains("template error"), "{outcome}");
    let (status, body) = chat(&gateway, ask.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system(&upstream), "FAQ all: second edition");

    // A new prompt file appears: served after a reload.
    std::fs::write(&faq, FAQ).expect("restore");
    std::fs::write(dir.path().join("prompts").join("welcome.yml"), FAQ.replace("FAQ", "Welcome")).expect("add");
    let (status, outcome) = admin(&gateway, http::Method::POST, "/admin/reload").await;
    assert_eq!(status, 200, "{outcome}");
    let (status, body) = chat(&gateway, json!({"model": "chat", "prompt": {"id": "welcome"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(system(&upstream), "Welcome all: first edition");
    gateway.shutdown().await;
}

#[test]
fn the_cli_lists_and_renders_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("weir.yaml");
    let base = "backends: { mock: { kind: mock } }\nmodels: { m: { targets: [ { backend: mock, model: m } ] } }\nauth: { mode: none }\n";
    std::fs::write(&config, format!("{base}{PROMPTS}")).expect("write config");
    let config = config.to_str().expect("utf-8 path");

    let list = weir(&["prompt", "list", "--config", config]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.lines().any(|l| l.starts_with("support-answer") && l.contains(" v2 ") && l.contains('*')), "{table}");
    assert!(table.contains("question (required)"), "{table}");

    let render = weir(&[
        "prompt",
        "render",
        "support-answer@v1",
        "--var",
        "question=Why?",
        "--var",
        "product=Acme",
        "--config",
        config,
    ]);
    assert!(render.status.success(), "{}", String::from_utf8_lossy(&render.stderr));
    let messages: Value = serde_json::from_slice(&render.stdout).expect("JSON");
    assert_eq!(messages[0]["content"], "v1: You answer questions about Acme. Be brief.");
    assert_eq!(messages[1], json!({"role": "user", "content": "Why?"}));

    let docs = weir(&[
        "prompt",
        "render",
        "support-answer",
        "--var",
        "question=Q",
        "--var-json",
        r#"docs=["a.md"]"#,
        "--config",
        config,
    ]);
    let messages: Value = serde_json::from_slice(&docs.stdout).expect("JSON");
    assert_eq!(messages[0]["content"], "v2: You are the weir support desk.\n- cite a.md\n");

    let missing = weir(&["prompt", "render", "support-answer", "--config", config]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("prompt.variables.question"));

    let check = weir(&["check", "--config", config]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("1 prompts"), "{}", String::from_utf8_lossy(&check.stdout));
    std::fs::write(
        dir.path().join("weir.yaml"),
        format!("{base}{}", PROMPTS.replace("{{ question }}", "{{ question }")),
    )
    .expect("write");
    let broken = weir(&["check", "--config", config]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("template error"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}

/// The Responses API's own `prompt` parameter renders the same way; the backend sees chat
/// messages and no `prompt`, and the answer echoes the prompt as OpenAI's does.
#[tokio::test]
async fn the_responses_api_prompt_parameter_is_rendered() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let gateway = support::start(&yaml(&upstream, "")).await;
    let response = support::http()
        .post(format!("{}/responses", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({
            "model": "chat",
            "prompt": {"id": "support-answer", "version": "v1", "variables": {"question": "Q?", "product": "Acme"}},
            "input": "and one more thing",
            "store": false
        }))
        .send()
        .await
        .expect("request reaches the gateway");
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["prompt"]["id"], "support-answer", "{body}");
    let sent = upstream.only_request().json();
    assert!(sent.get("prompt").is_none(), "the prompt field never reaches a backend: {sent}");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "v1: You answer questions about Acme. Be brief."},
            {"role": "user", "content": "Q?"},
            {"role": "user", "content": "and one more thing"}
        ])
    );
    // An unknown prompt is the client's error, named, and nothing is sent.
    let response = support::http()
        .post(format!("{}/responses", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({"model": "chat", "prompt": {"id": "nope"}, "store": false}))
        .send()
        .await
        .expect("request reaches the gateway");
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "prompt.id", "{body}");
    assert_eq!(upstream.requests().len(), 1);
    gateway.shutdown().await;

    // A backend that speaks the Responses API natively gets a prompt weir does not know as sent.
    let answer = json!({"id": "resp_up", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-up",
        "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}});
    let native = MockUpstream::start(Behavior::reply(200, answer.to_string())).await;
    let config = yaml(&upstream, "")
        .replacen(
            "backends:\n",
            &format!("backends:\n  oai: {{ kind: openai, base_url: {}, responses: native }}\n", native.url()),
            1,
        )
        .replacen("models:\n", "models:\n  native: { targets: [ { backend: oai, model: gpt-up } ] }\n", 1);
    let gateway = support::start(&config).await;
    let response = support::http()
        .post(format!("{}/responses", support::base_url(&gateway)))
        .bearer_auth(ALL_KEY)
        .json(&json!({"model": "native", "prompt": {"id": "pmpt_upstream_only"}, "input": "hi", "store": false}))
        .send()
        .await
        .expect("request reaches the gateway");
    let (status, _, body) = support::body_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(native.only_request().json()["prompt"]["id"], "pmpt_upstream_only");
    gateway.shutdown().await;
}
