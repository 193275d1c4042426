//! Datasets end to end: what a sink records for each kind of request, redaction, rotation,
//! feedback, and the `weir dataset export` / `weir experiment report` commands run as the
//! real binary over hand-written and recorded files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use async_openai::types::chat::{ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs};
use serde::Deserialize;
use serde_json::{Value, json};
use weir::Gateway;

use crate::support::{self, ALL_KEY, Behavior, MockUpstream, TEAM_KEY, Timeouts};

/// The standard fixture plus `datasets` (YAML list items, indented two spaces).
async fn gateway_with(upstream: &MockUpstream, datasets: &str) -> Gateway {
    let yaml = format!("{}datasets:\n{datasets}", support::standard_yaml(&upstream.url(), Timeouts::default()));
    support::start(&yaml).await
}

/// Every JSON line of every dataset file in `dir`, in order.
fn lines(dir: &Path) -> Vec<Value> {
    dataset_files(dir)
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

fn dataset_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        weir::datasets::parse_file_name(&name).unwrap_or_else(|| panic!("unexpected file {name}"))
    });
    files
}

fn record<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    lines.iter().find(|l| l["request_id"] == request_id && l.get("type").is_none()).unwrap_or_else(|| {
        panic!("no record for {request_id} in {lines:#?}");
    })
}

async fn post(gateway: &Gateway, path: &str, key: &str, body: Value) -> (u16, String, Value) {
    let response = support::http()
        .post(format!("{}{path}", support::base_url(gateway)))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if body.get("stream") == Some(&json!(true)) && status == 200 {
        Value::String(text)
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, id, value)
}

#[tokio::test]
async fn plain_streamed_and_failed_requests_are_recorded() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(&upstream, &format!("  - {{ name: all, dir: {} }}\n", dir.path().display())).await;

    // Plain, through the SDK.
    let request = CreateChatCompletionRequestArgs::default()
        .model("chat")
        .messages(vec![ChatCompletionRequestUserMessage::from("hello there").into()])
        .build()
        .unwrap();
    let answer = support::openai(&gateway, Some(TEAM_KEY)).chat().create(request).await.unwrap();
    let plain_content = answer.choices[0].message.content.clone().unwrap();

    // Streamed, with usage.
    let streamed = json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream me"}]});
    let (status, stream_id, sse) = post(&gateway, "/chat/completions", TEAM_KEY, streamed).await;
    assert_eq!(status, 200);
    let streamed_text: String = support::sse_events(sse.as_str().unwrap())
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| e.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned))
        .collect();

    // Upstream 500 → 502.
    upstream.set(Behavior::error(500, "upstream broke"));
    let (status, failed_id, _) = post(
        &gateway,
        "/chat/completions",
        TEAM_KEY,
        json!({"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 502);
    // Refused before routing: the model is not allowed for this key.
    let (status, refused_id, _) =
        post(&gateway, "/embeddings", TEAM_KEY, json!({"model": "embed", "input": "x"})).await;
    assert_eq!(status, 403);

    gateway.shutdown().await;
    let lines = lines(dir.path());
    assert_eq!(lines.len(), 4, "{lines:#?}");

    let plain = lines.iter().find(|l| l["stream"] == false && l["status"] == 200).unwrap();
    assert_eq!(plain["model"], "chat");
    assert_eq!(plain["key"], "team");
    assert_eq!(plain["backend"], "up");
    assert_eq!(plain["variant"], "up");
    assert_eq!(plain["cache"], "bypass");
    assert_eq!(plain["request"]["messages"][0]["content"], "hello there");
    assert_eq!(plain["response"]["choices"][0]["message"]["content"], plain_content.as_str());
    assert!(plain["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(plain["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(plain["error"].is_null());
    assert!(humantime::parse_rfc3339(plain["ts"].as_str().unwrap()).is_ok());

    let stream = record(&lines, &stream_id);
    assert_eq!(stream["status"], 200);
    assert_eq!(stream["response"]["object"], "chat.completion", "stored assembled");
    assert_eq!(stream["response"]["choices"][0]["message"]["content"], streamed_text.as_str());
    assert_eq!(stream["response"]["choices"][0]["finish_reason"], "stop");
    assert!(stream["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(stream["ttft_ms"].as_f64().unwrap() <= stream["latency_ms"].as_f64().unwrap());

    let failed = record(&lines, &failed_id);
    assert_eq!(failed["status"], 502);
    assert!(failed["error"].as_str().unwrap().contains("upstream broke"), "{failed}");
    assert!(failed["response"].is_null());

    let refused = record(&lines, &refused_id);
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["model"], "embed");
}

/// An upstream's 200 that is not JSON reaches the client as it was sent (weir is a proxy),
/// and its record says why it holds no answer rather than looking like a plain success.
#[tokio::test]
async fn an_answer_that_cannot_be_read_back_is_recorded_with_why() {
    let upstream = MockUpstream::start(Behavior::reply(200, "{not json")).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_with(&upstream, &format!("  - {{ name: all, dir: {} }}\n", dir.path().display())).await;
    let (status, id, body) = post(
        &gateway,
        "/chat/completions",
        TEAM_KEY,
        json!({"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_str(), Some("{not json"), "relayed as sent");
    gateway.shutdown().await;
    let lines = lines(dir.path());
    let record = record(&lines, &id);
    assert_eq!(record["outcome"], "completed");
    assert!(record["response"].is_null());
    assert_eq!(record["error"], "the upstream's answer is not JSON", "{record}");
}

#[tokio::test]
async fn filters_redaction_and_rotation() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let (all, errors) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let datasets = format!(
        "  - {{ name: all, dir: {}, redact: [email, phone, key, 'acct-[0-9]+'], max_file_size: 2KiB }}\n  - {{ name: errors, dir: {}, filter: {{ status: 5xx }} }}\n",
        all.path().display(),
        errors.path().display()
    );
    let gateway = gateway_with(&upstream, &datasets).await;
    let secret = "mail jane@example.com, call +1 415 555 0123, key sk-proj-abcdefghijklmnop, acct-4242";
    for _ in 0..6 {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": secret}]});
        assert_eq!(post(&gateway, "/chat/completions", ALL_KEY, body).await.0, 200);
    }
    gateway.shutdown().await;

    let files = dataset_files(all.path());
    assert!(files.len() >= 2, "rotated by size: {files:?}");
    let text: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    for leaked in ["jane@example.com", "555 0123", "sk-proj-abcdefghijklmnop", "acct-4242"] {
        assert!(!text.contains(leaked), "{leaked} was written");
    }
    let first = &lines(all.path())[0];
    assert_eq!(
        first["request"]["messages"][0]["content"],
        "mail [REDACTED:email], call [REDACTED:phone], key [REDACTED:key], [REDACTED]"
    );
    assert_eq!(lines(all.path()).len(), 6);
    assert!(dataset_files(errors.path()).is_empty() || lines(errors.path()).is_empty(), "no 5xx was recorded");
}

#[tokio::test]
async fn feedback_is_checked_and_appended_to_every_dataset() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let datasets = format!(
        "  - {{ name: a, dir: {} }}\n  - {{ name: b, dir: {}, redact: [email] }}\n",
        a.path().display(),
        b.path().display()
    );
    let gateway = gateway_with(&upstream, &datasets).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "rate me"}]});
    let (_, id, _) = post(&gateway, "/chat/completions", TEAM_KEY, body).await;

    let (status, _, answer) =
        post(&gateway, "/feedback", TEAM_KEY, json!({"request_id": id, "score": 0.8, "comment": "ok, bob@x.org"}))
            .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["datasets"], 2);

    let (status, _, error) = post(&gateway, "/feedback", TEAM_KEY, json!({"request_id": "req_nope", "score": 1})).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["param"], "request_id");
    let (status, _, error) = post(&gateway, "/feedback", TEAM_KEY, json!({"request_id": id, "score": 1.5})).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "score");
    let (status, _, _) = post(&gateway, "/feedback", "sk-wrong", json!({"request_id": id, "score": 1})).await;
    assert_eq!(status, 401);
    let metrics = support::http()
        .get(format!("http://{}/metrics", gateway.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"weir_feedback_score_count{model="chat",variant="up"} 1"#),
        "the score is counted for the variant that answered:\n{metrics}"
    );
    gateway.shutdown().await;

    for (dir, comment) in [(a.path(), "ok, bob@x.org"), (b.path(), "ok, [REDACTED:email]")] {
        let lines = lines(dir);
        let feedback: Vec<&Value> = lines.iter().filter(|l| l["type"] == "feedback").collect();
        assert_eq!(feedback.len(), 1, "{lines:#?}");
        assert_eq!(feedback[0]["request_id"], id.as_str());
        assert_eq!(feedback[0]["score"], 0.8);
        assert_eq!(feedback[0]["comment"], comment);
        assert!(feedback[0]["ts"].is_string());
    }
}

// === the CLI over hand-written files ===

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().expect("run weir")
}

fn chat_record(id: &str, variant: &str, status: u16, latency: f64, extra: Value) -> Value {
    let mut record = json!({
        "request_id": id, "ts": "2026-11-28T10:00:00.000Z", "key": "team", "model": "chat", "backend": "b",
        "variant": variant, "experiment": "exp", "stream": false,
        "request": {"model": "chat", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": format!("q {id}")}]},
        "response": if status == 200 { json!({"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("a {id}")}, "finish_reason": "stop"}]}) } else { Value::Null },
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "latency_ms": latency, "ttft_ms": null, "cost_usd": 0.001, "cache": "miss", "status": status,
        "error": if status == 200 { Value::Null } else { json!("upstream failed") },
    });
    for (k, v) in extra.as_object().unwrap() {
        record[k] = v.clone();
    }
    record
}

fn feedback(id: &str, score: f64) -> Value {
    json!({"type": "feedback", "request_id": id, "score": score, "comment": null, "ts": "2026-11-28T11:00:00.000Z"})
}

fn write_lines(path: &Path, lines: &[Value], tail: &str) {
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str(tail);
    std::fs::write(path, text).unwrap();
}

/// The OpenAI fine-tuning chat format, strictly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FineTuning {
    messages: Vec<FineTuningMessage>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FineTuningMessage {
    role: String,
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[test]
fn export_writes_strict_fine_tuning_lines_and_skips_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let tool_call = json!({"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}});
    let with_tools = chat_record(
        "r3",
        "control",
        200,
        10.0,
        json!({
            "request": {"model": "chat", "messages": [{"role": "user", "content": "weather in Oslo?", "cache_control": {}}],
                "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]},
            "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [tool_call]}, "finish_reason": "tool_calls"}]},
        }),
    );
    write_lines(
        &dir.path().join("2026-11-28.jsonl"),
        &[
            chat_record("r1", "control", 200, 10.0, json!({})),
            chat_record("r2", "control", 502, 10.0, json!({})),
            feedback("r1", 0.9),
        ],
        "",
    );
    write_lines(
        &dir.path().join("2026-11-28.1.jsonl"),
        &[with_tools, chat_record("r4", "candidate", 200, 10.0, json!({"model": "other"})), feedback("r3", 0.2)],
        r#"{"request_id":"torn","ts":"2026-11"#,
    );
    let out = dir.path().join("ft.jsonl");
    let dir_arg = dir.path().to_str().unwrap();
    let output =
        weir(&["dataset", "export", "--dir", dir_arg, "--format", "openai-chat", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("2026-11-28.1.jsonl:4: skipped a corrupt or torn line"), "{stderr}");

    let text = std::fs::read_to_string(&out).unwrap();
    let parsed: Vec<FineTuning> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(parsed.len(), 3, "r1, r3, r4 (r2 failed):\n{text}");
    let first = &parsed[0];
    assert_eq!(first.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant"]);
    assert_eq!(first.messages[2].content, Some(json!("a r1")));
    let tools = &parsed[1];
    assert_eq!(tools.messages[1].tool_calls.as_ref().unwrap()[0]["function"]["name"], "weather");
    assert!(tools.messages[1].content.is_none() || tools.messages[1].content == Some(Value::Null));
    assert!(tools.messages.iter().all(|m| m.tool_call_id.is_none() && m.name.is_none()));
    assert_eq!(tools.tools.as_ref().unwrap().len(), 1);

    // Filters and the feedback join: to stdout this time.
    let output = weir(&["dataset", "export", "--dir", dir_arg, "--format", "openai-chat", "--min-score", "0.5"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "only r1 scored ≥ 0.5:\n{text}");
    let output =
        weir(&["dataset", "export", "--dir", dir_arg, "--format", "eval", "--model", "chat", "--since", "2026-11-28"]);
    let evals: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(evals.len(), 2, "{evals:#?}");
    assert_eq!(evals[0]["output"], "a r1");
    assert_eq!(evals[0]["input"][1]["content"], "q r1");
    assert_eq!(evals[0]["metadata"]["score"], 0.9);
    assert_eq!(evals[1]["output"]["tool_calls"][0]["id"], "call_1");
    assert_eq!(evals[1]["metadata"]["score"], 0.2);
    let output = weir(&["dataset", "export", "--dir", dir_arg, "--format", "eval", "--since", "2026-11-29"]);
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn report_numbers_match_a_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    // control: 4 requests (1 failed), latencies 100 200 300 (ok ones), scores 0.2 0.4 0.6.
    // candidate: 3 requests, latencies 50 60 70, streamed TTFT 5 6 7, scores 0.8 0.9 1.0.
    let stream = |ttft: f64| json!({"stream": true, "ttft_ms": ttft});
    let mut lines = vec![
        chat_record("c1", "control", 200, 100.0, json!({})),
        chat_record("c2", "control", 200, 200.0, json!({})),
        chat_record("c3", "control", 200, 300.0, json!({})),
        chat_record("c4", "control", 502, 5.0, json!({})),
        chat_record("k1", "candidate", 200, 50.0, stream(5.0)),
        chat_record("k2", "candidate", 200, 60.0, stream(6.0)),
        chat_record("k3", "candidate", 200, 70.0, stream(7.0)),
        chat_record("other", "x", 200, 1.0, json!({"experiment": "another"})),
    ];
    for (id, score) in [("c1", 0.2), ("c2", 0.4), ("c3", 0.9), ("c3", 0.6), ("k1", 0.8), ("k2", 0.9), ("k3", 1.0)] {
        lines.push(feedback(id, score));
    }
    write_lines(&dir.path().join("2026-11-28.jsonl"), &lines, "");
    let output = weir(&[
        "experiment",
        "report",
        "--dir",
        dir.path().to_str().unwrap(),
        "--experiment",
        "exp",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["experiments"].as_array().unwrap().len(), 1);
    let exp = &report["experiments"][0];
    assert_eq!(exp["control"], "control");
    let (control, candidate) = (&exp["variants"][0], &exp["variants"][1]);
    let near = |v: &Value, expected: f64| (v.as_f64().unwrap() - expected).abs() < 1e-6;

    assert_eq!(control["requests"], 4);
    assert_eq!(control["errors"], 1);
    assert!(near(&control["error_rate"], 0.25));
    assert!(near(&control["latency_ms"]["p50"], 200.0) && near(&control["latency_ms"]["p95"], 300.0));
    assert_eq!(control["ttft_ms"]["count"], 0);
    assert_eq!(control["input_tokens"], 40);
    assert_eq!(control["output_tokens"], 20);
    assert!(near(&control["cost_usd"], 0.004));
    // Scores 0.2 0.4 0.6 (c3's last feedback wins): mean 0.4, sd 0.2,
    // half-width qt(0.975, 2) * 0.2 / sqrt(3) = 4.302653 * 0.1154701 = 0.4968275.
    assert_eq!(control["feedback"]["count"], 3);
    assert!(near(&control["feedback"]["mean"], 0.4));
    assert!(near(&control["feedback"]["ci95"][0], 0.4 - 0.4968275), "{control}");
    assert!(near(&control["feedback"]["ci95"][1], 0.4 + 0.4968275));
    assert!(control["vs_control"].is_null());

    assert!(near(&candidate["latency_ms"]["p50"], 60.0) && near(&candidate["latency_ms"]["p95"], 70.0));
    assert!(near(&candidate["ttft_ms"]["p50"], 6.0) && near(&candidate["ttft_ms"]["p95"], 7.0));
    // Feedback 0.8 0.9 1.0 vs 0.2 0.4 0.6: diff 0.5, se² = 0.01/3 + 0.04/3 = 0.0166667,
    // t = 0.5 / 0.1290994 = 3.872983, df = 0.0166667² / ((0.0033333² + 0.0133333²) / 2) = 2.941176;
    // p = 2 * (1 - pt(3.872983, 2.941176)) ≈ 0.03156.
    let fb = &candidate["vs_control"]["feedback"];
    assert!(near(&fb["diff"], 0.5));
    assert!(near(&fb["t"], 3.872983346207417), "{fb}");
    assert!(near(&fb["df"], 2.9411764705882355), "{fb}");
    assert!((fb["p"].as_f64().unwrap() - 0.031562).abs() < 1e-5, "{fb}");
    assert_eq!(fb["significant"], true);
    // Latency 50 60 70 vs 100 200 300: diff -140, t = -140 / sqrt(100/3 + 10000/3) = -2.412837.
    let lat = &candidate["vs_control"]["latency"];
    assert!(near(&lat["diff"], -140.0));
    assert!(near(&lat["t"], -2.4128369564), "{lat}");
    assert_eq!(lat["significant"], false);

    let table = weir(&["experiment", "report", "--dir", dir.path().to_str().unwrap()]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("experiment exp (control: control;") && text.contains("experiment another"), "{text}");
    assert!(text.contains("0.400 [-0.097, 0.897] n=3"), "{text}");
    // The always-valid comparison next to it, with the live gateway's code: undecided below
    // min_samples (200 by default) ...
    assert!(text.contains("always-valid on feedback at 95% confidence, min 200 samples"), "{text}");
    assert!(text.contains("+0.500 [") && text.contains("] undecided"), "{text}");
    let json = weir(&[
        "experiment",
        "report",
        "--dir",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
        "--min-samples",
        "2",
    ]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    let exp = report["experiments"].as_array().unwrap().iter().find(|e| e["experiment"] == "exp").unwrap();
    let arm = exp["always_valid"]["arms"].as_array().unwrap().iter().find(|a| a["variant"] == "candidate").unwrap();
    // ... and with --min-samples 2 the mixture SPRT decides. Reference (tests/golden/
    // experiments.py, quadrature and root finding): interval [0.1069951, 0.8930049], p 0.0035528.
    assert!(near(&arm["vs_control"]["diff"], 0.5), "{arm}");
    assert!(
        near(&arm["vs_control"]["interval"]["lo"], 0.1069951) && near(&arm["vs_control"]["interval"]["hi"], 0.8930049),
        "{arm}"
    );
    assert!(near(&arm["vs_control"]["p"], 0.0035528), "{arm}");
    assert_eq!(arm["decision"], "better", "{arm}");
    assert_eq!(exp["always_valid"]["winner"], "candidate");
    assert_eq!(exp["always_valid"]["min_samples"], 2);
    let bad = weir(&["experiment", "report", "--dir", dir.path().to_str().unwrap(), "--confidence", "2"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--confidence must be above 0.5"));
}

#[tokio::test]
async fn cached_and_rate_limited_requests_are_recorded() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = support::standard_yaml(&upstream.url(), Timeouts::default())
        .replacen(
            "    targets: [ { backend: up, model: upstream-chat } ]\n",
            "    targets: [ { backend: up, model: upstream-chat } ]\n    cache: { ttl: 10m }\n",
            1,
        )
        .replacen("    models: [chat]\n", "    models: [chat]\n    rate: { rpm: 2 }\n", 1);
    let gateway =
        support::start(&format!("{yaml}datasets:\n  - {{ name: all, dir: {} }}\n", dir.path().display())).await;

    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "cache me"}]});
    let (status, miss_id, miss) = post(&gateway, "/chat/completions", TEAM_KEY, body.clone()).await;
    assert_eq!(status, 200);
    let (status, hit_id, hit) = post(&gateway, "/chat/completions", TEAM_KEY, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(hit, miss);
    let (status, limited_id, _) = post(&gateway, "/chat/completions", TEAM_KEY, body).await;
    assert_eq!(status, 429);

    gateway.shutdown().await;
    let lines = lines(dir.path());
    assert_eq!(record(&lines, &miss_id)["cache"], "miss");
    let hit_record = record(&lines, &hit_id);
    assert_eq!(hit_record["cache"], "hit");
    assert_eq!(hit_record["status"], 200);
    assert_eq!(hit_record["response"]["choices"][0]["message"]["content"], miss["choices"][0]["message"]["content"]);
    let limited = record(&lines, &limited_id);
    assert_eq!(limited["status"], 429);
    assert!(limited["error"].as_str().unwrap().contains("RPM"), "{limited}");
}

/// `weir_dataset_records_total{dataset,outcome}` as `/metrics` shows it.
async fn dataset_count(gateway: &Gateway, dataset: &str, outcome: &str) -> u64 {
    let metrics = support::http()
        .get(format!("http://{}/metrics", gateway.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(r#"weir_dataset_records_total{{dataset="{dataset}",outcome="{outcome}"}} "#);
    metrics.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.parse().unwrap())
}

/// A dataset whose disk is full (its file leads to `/dev/full`): every record is counted as
/// dropped, none as written; and once the disk has room, records are written again.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn records_lost_to_a_full_disk_count_as_dropped_not_written() {
    let upstream = MockUpstream::start(Behavior::mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let date = weir::datasets::date_of_day(weir::datasets::day_of(std::time::SystemTime::now()));
    let file = dir.path().join(weir::datasets::file_name(&date, 0));
    std::os::unix::fs::symlink("/dev/full", &file).unwrap();
    let gateway = gateway_with(&upstream, &format!("  - {{ name: full, dir: {} }}\n", dir.path().display())).await;
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let (status, _, answer) = post(&gateway, "/chat/completions", TEAM_KEY, body.clone()).await;
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = std::time::Instant::now() + support::DEADLINE;
    while dataset_count(&gateway, "full", "dropped").await < 3 {
        assert!(std::time::Instant::now() < deadline, "records lost to the full disk were not counted as dropped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(dataset_count(&gateway, "full", "written").await, 0);

    // Room again: the next records reach the file and count as written.
    std::fs::remove_file(&file).unwrap();
    let (status, id, _) = post(&gateway, "/chat/completions", TEAM_KEY, body).await;
    assert_eq!(status, 200);
    gateway.shutdown().await;
    let lines = lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:#?}");
    record(&lines, &id);
}
