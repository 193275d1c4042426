//! Experiments end to end over loopback: Thompson shares moved by feedback, two replicas
//! sharing one real `redis-server`, promotion of a decided winner, `weir eval run` (every
//! scorer, the judge through weir, a resumed run, `--fail-under`) and `weir dataset export
//! --format dpo`, the last two as the real binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::Gateway;

use crate::support::{self, Behavior, MockUpstream};

const ADMIN: &str = "admin-secret";

/// A gateway whose model `chat` splits between variants `control` (mock model `mock-a`) and
/// `candidate` (`mock-b`) on the built-in mock, with `experiment` settings `settings`.
fn yaml(settings: &str, extra: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token: {ADMIN} }}
backends:
  fast: {{ kind: mock, latency: 1ms }}
  slow: {{ kind: mock, latency: 40ms }}
models:
  chat:
    experiment: exp
    targets:
      - {{ backend: fast, model: mock-a, variant: control }}
      - {{ backend: fast, model: mock-b, variant: candidate }}
auth: {{ mode: none }}
experiments:
  exp: {settings}
{extra}"#
    )
}

async fn chat(gateway: &Gateway, prompt: &str) -> (String, String) {
    let response = support::http()
        .post(format!("{}/chat/completions", support::base_url(gateway)))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let variant = response.headers()["x-weir-variant"].to_str().unwrap().to_owned();
    response.bytes().await.unwrap();
    (id, variant)
}

async fn feedback(gateway: &Gateway, id: &str, score: f64) {
    let response = support::http()
        .post(format!("{}/feedback", support::base_url(gateway)))
        .json(&json!({"request_id": id, "score": score}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["experiment"], true, "{answer}");
}

async fn admin(gateway: &Gateway, path: &str) -> (u16, Value) {
    let response =
        support::http().get(format!("http://{}{path}", gateway.admin_addr())).bearer_auth(ADMIN).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The arm `variant` of `/admin/experiments/exp`.
fn arm<'a>(view: &'a Value, variant: &str) -> &'a Value {
    view["analysis"]["arms"].as_array().unwrap().iter().find(|a| a["variant"] == variant).unwrap()
}

#[tokio::test]
async fn feedback_for_one_arm_shifts_its_share_within_a_second() {
    let gateway = support::start(&yaml(
        "{ strategy: thompson, metric: feedback, min_share: 0.05, stop: { min_samples: 20 } }",
        "",
    ))
    .await;
    let (_, view) = admin(&gateway, "/admin/experiments/exp").await;
    assert_eq!(arm(&view, "candidate")["share"], 0.5, "{view}");
    let mut served = Vec::new();
    // 80 requests: each arm gets min_samples (20) but for a 4-in-a-million chance.
    for i in 0..80 {
        served.push(chat(&gateway, &format!("question {i}")).await);
    }
    assert!(served.iter().any(|(_, v)| v == "control") && served.iter().any(|(_, v)| v == "candidate"));
    for (i, (id, variant)) in served.iter().enumerate() {
        // Scores that vary a little, as real ones do: around 0.85 for one arm, 0.15 the other.
        let jitter = if i % 2 == 0 { 0.1 } else { -0.1 };
        feedback(&gateway, id, if variant == "candidate" { 0.85 + jitter } else { 0.15 + jitter }).await;
    }
    // A second feedback on a request is accepted but counts once.
    let again = support::http()
        .post(format!("{}/feedback", support::base_url(&gateway)))
        .json(&json!({"request_id": served[0].0, "score": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["experiment"], false);
    let posted = Instant::now();
    let (share, view) = loop {
        let (_, view) = admin(&gateway, "/admin/experiments/exp").await;
        let share = arm(&view, "candidate")["share"].as_f64().unwrap();
        let samples =
            arm(&view, "candidate")["samples"].as_u64().unwrap() + arm(&view, "control")["samples"].as_u64().unwrap();
        if (share > 0.9 && samples == 80) || posted.elapsed() > Duration::from_secs(1) {
            break (share, view);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = posted.elapsed();
    assert!(share > 0.9 && took <= Duration::from_secs(1), "share {share} after {took:?}: {view}");
    let control = arm(&view, "control")["share"].as_f64().unwrap();
    assert!((control + share - 1.0).abs() < 1e-9 && control >= 0.05 - 1e-9, "{control} + {share}");
    assert_eq!(arm(&view, "candidate")["decision"], "better", "{view}");
    assert_eq!(view["analysis"]["winner"], "candidate");
    // New traffic follows the shares.
    let mut candidate = 0;
    for i in 0..100 {
        candidate += usize::from(chat(&gateway, &format!("later {i}")).await.1 == "candidate");
    }
    assert!(candidate >= 80, "{candidate} of 100 went to the better arm");
    // The list, a missing name, and the metrics.
    let (status, list) = admin(&gateway, "/admin/experiments").await;
    assert_eq!((status, list["data"][0]["name"].as_str()), (200, Some("exp")));
    let (status, missing) = admin(&gateway, "/admin/experiments/nope").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "experiment_not_found");
    let metrics = support::http().get(format!("http://{}/metrics", gateway.admin_addr())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(r#"weir_experiment_decision{experiment="exp",variant="candidate",decision="better"} 1"#));
    assert!(metrics.contains(r#"weir_experiment_share{experiment="exp",variant="candidate"}"#));
    gateway.shutdown().await;
}

#[tokio::test]
async fn two_replicas_sharing_redis_allocate_from_the_same_counts() {
    let Some((_redis, port)) = crate::limits::start_redis() else { return };
    let settings = "{ strategy: thompson, metric: feedback, min_share: 0.1 }";
    let state = format!("state: {{ store: \"redis://127.0.0.1:{port}/\" }}\n");
    let a = support::start(&yaml(settings, &state)).await;
    let b = support::start(&yaml(settings, &state)).await;
    // Only replica A sees traffic and feedback.
    for i in 0..30 {
        let (id, variant) = chat(&a, &format!("q {i}")).await;
        feedback(&a, &id, if variant == "candidate" { 0.9 } else { 0.2 }).await;
    }
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let (_, va) = admin(&a, "/admin/experiments/exp").await;
        let (_, vb) = admin(&b, "/admin/experiments/exp").await;
        let samples = |v: &Value| {
            arm(v, "control")["samples"].as_u64().unwrap() + arm(v, "candidate")["samples"].as_u64().unwrap()
        };
        if samples(&va) == 30 && samples(&vb) == 30 {
            assert_eq!(va["analysis"]["arms"], vb["analysis"]["arms"], "the replicas disagree");
            assert_eq!(vb["store"], "redis");
            assert!(arm(&vb, "candidate")["share"].as_f64().unwrap() > 0.5, "{vb}");
            break;
        }
        assert!(Instant::now() < deadline, "replica B never saw A's counts: A {va} B {vb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn promote_moves_all_traffic_to_the_decided_winner() {
    // `candidate` answers 40 ms slower; latency decides it worse, so the control wins.
    let text = yaml("{ metric: latency, stop: { min_samples: 10, promote: true } }", "").replace(
        "{ backend: fast, model: mock-b, variant: candidate }",
        "{ backend: slow, model: mock-b, variant: candidate }",
    );
    let gateway = support::start(&text).await;
    let deadline = Instant::now() + support::DEADLINE;
    let mut i = 0;
    let view = loop {
        chat(&gateway, &format!("q {i}")).await;
        i += 1;
        let (_, view) = admin(&gateway, "/admin/experiments/exp").await;
        if view["promoted"].is_string() {
            break view;
        }
        assert!(Instant::now() < deadline, "no promotion after {i} requests: {view}");
    };
    assert_eq!(view["promoted"], "control", "{view}");
    assert_eq!(arm(&view, "candidate")["decision"], "worse");
    assert_eq!(arm(&view, "control")["share"], 1.0);
    for i in 0..40 {
        assert_eq!(chat(&gateway, &format!("after {i}")).await.1, "control");
    }
    let metrics = support::http().get(format!("http://{}/metrics", gateway.admin_addr())).send().await.unwrap();
    assert!(metrics.text().await.unwrap().contains(r#"weir_experiment_promotions_total{experiment="exp"} 1"#));
    gateway.shutdown().await;
}

// === weir eval run ===

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run weir")
}

/// Runs the binary off the runtime's thread, so the in-process gateway keeps serving.
async fn weir_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || weir(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

fn results(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn summary(out: &Path) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// Records four chats through a gateway with a dataset, and returns the dataset dir.
async fn recorded_dataset(dir: &Path) {
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}\nbackends:\n  m: {{ kind: mock }}\nmodels:\n  chat: {{ targets: [ {{ backend: m, model: mock-a }} ] }}\nauth: {{ mode: none }}\ndatasets:\n  - {{ name: all, dir: {} }}\n",
        dir.display()
    );
    let gateway = support::start(&yaml).await;
    for prompt in ["capital of France?", "two plus two?", "a haiku", "name a colour"] {
        let response = support::http()
            .post(format!("{}/chat/completions", support::base_url(&gateway)))
            .json(&json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn eval_run_scores_every_way_resumes_and_gates() {
    let data = tempfile::tempdir().unwrap();
    recorded_dataset(data.path()).await;
    let judge = MockUpstream::start(Behavior::reply(
        200,
        json!({"id": "j", "object": "chat.completion", "created": 1, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": "Grading: {\"score\": 0.75, \"reason\": \"mostly right\"}"}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}})
        .to_string(),
    ))
    .await;
    let text = format!(
        r#"server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}
backends:
  fast: {{ kind: mock, latency: 1ms }}
  up: {{ kind: openai, base_url: {} }}
models:
  chat:
    targets:
      - {{ backend: fast, model: mock-a, variant: control }}
      - {{ backend: fast, model: mock-b, variant: candidate }}
  judge: {{ targets: [ {{ backend: up, model: judge-1 }} ] }}
auth: {{ mode: none }}
"#,
        judge.url()
    );
    let gateway = support::start(&text).await;
    let target = format!("http://{}", gateway.addr());
    let dataset = data.path().display().to_string();
    let outs = tempfile::tempdir().unwrap();
    let run = |scorer: &str, out: &str, more: &[&str]| {
        let mut args: Vec<String> =
            ["eval", "run", "--dataset", &dataset, "--target", &target, "--model", "chat", "--scorer", scorer]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        args.extend(["--out".to_owned(), outs.path().join(out).display().to_string()]);
        args.extend(more.iter().map(|s| (*s).to_owned()));
        weir_async(args)
    };

    // exact and contains: the mock answers a prompt the same way every time.
    let output = run("exact", "exact", &["--variant", "control", "--variant", "candidate", "--fail-under", "1"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows = summary(&outs.path().join("exact"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(
            (row["items"].as_u64(), row["mean_score"].as_f64(), row["failures"].as_u64()),
            (Some(4), Some(1.0), Some(0))
        );
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("candidate") && table.contains("1.000"), "{table}");
    assert_eq!(results(&outs.path().join("exact")).len(), 8);
    let output = run("contains", "contains", &[]).await;
    assert!(output.status.success());
    assert_eq!(summary(&outs.path().join("contains"))[0]["mean_score"], 1.0);
    let output = run(r"regex:^\w+( \w+)*$", "regex", &[]).await;
    assert!(output.status.success());
    assert_eq!(summary(&outs.path().join("regex"))[0]["mean_score"], 1.0);

    // json-schema: the mock's prose is not JSON, so it scores 0 and misses --fail-under.
    let schema = outs.path().join("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["answer"]}"#).unwrap();
    let output = run(&format!("json-schema:{}", schema.display()), "schema", &["--fail-under", "0.5"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = results(&outs.path().join("schema"));
    assert!(lines.iter().all(|l| l["score"] == 0.0 && l["reason"] == "the answer is not JSON"), "{lines:?}");

    // The judge, called through weir; first two items, then the rest (resumed).
    let output = run("judge:judge", "judge", &["--limit", "2"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(judge.requests().len(), 2);
    let output = run("judge:judge", "judge", &["--concurrency", "2"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(judge.requests().len(), 4, "the resumed run asked only the two items left");
    let lines = results(&outs.path().join("judge"));
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["score"] == 0.75 && l["reason"] == "mostly right"), "{lines:?}");
    // Calls run concurrently, so the judge's requests come in any order.
    let asked: Vec<Value> = judge.requests().iter().map(|r| r.json()).collect();
    assert!(asked.iter().all(|a| a["model"] == "judge-1"));
    let prompts: Vec<&str> = asked.iter().map(|a| a["messages"][0]["content"].as_str().unwrap()).collect();
    assert!(prompts.iter().all(|p| p.contains("Answer to grade:")), "{prompts:?}");
    assert!(prompts.iter().any(|p| p.contains("user: capital of France?")), "{prompts:?}");
    // A resumed run with another scorer is refused.
    let output = run("exact", "judge", &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("other settings"));
    gateway.shutdown().await;
}

#[test]
fn eval_run_refuses_bad_arguments_clearly() {
    let output = weir(&[
        "eval",
        "run",
        "--dataset",
        "/nonexistent",
        "--target",
        "localhost:1",
        "--model",
        "m",
        "--scorer",
        "exact",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an http:// or https:// URL"));
    let output = weir(&[
        "eval",
        "run",
        "--dataset",
        "/nonexistent",
        "--target",
        "http://127.0.0.1:1",
        "--model",
        "m",
        "--scorer",
        "fuzzy",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown scorer `fuzzy`"));
}

// === weir dataset export --format dpo ===

fn chat_record(id: &str, variant: &str, prompt: &str, answer: &str) -> Value {
    json!({"request_id": id, "ts": "2026-11-28T10:00:00.000Z", "key": "k", "model": "chat", "backend": "b",
        "variant": variant, "experiment": "exp", "endpoint": "chat", "stream": false, "status": 200, "error": null,
        "request": {"model": "chat", "messages": [{"role": "user", "content": prompt}]},
        "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}})
}

fn feedback_line(id: &str, score: f64, ideal: Option<&str>) -> Value {
    json!({"type": "feedback", "request_id": id, "score": score, "ideal": ideal, "ts": "2026-11-28T11:00:00.000Z"})
}

#[test]
fn dpo_export_pairs_arms_regenerations_and_ideals() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        // Two arms answering one prompt.
        chat_record("1", "control", "Capital of France?", "Lyon"),
        chat_record("2", "candidate", "Capital of France?", "Paris"),
        // A regeneration within the margin: no pair.
        chat_record("3", "control", "2+2?", "4"),
        chat_record("4", "control", "2+2?", "four"),
        // An ideal for a poor answer.
        chat_record("5", "candidate", "Say hi", "Go away"),
        // No feedback: ignored.
        chat_record("6", "control", "Capital of France?", "Marseille"),
        feedback_line("1", 0.0, None),
        feedback_line("2", 1.0, None),
        feedback_line("3", 1.0, None),
        feedback_line("4", 0.8, None),
        feedback_line("5", 0.1, Some("Hello! How can I help?")),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("2026-11-28.jsonl"), text).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let output = weir(&[
        "dataset",
        "export",
        "--dir",
        &dir.path().display().to_string(),
        "--format",
        "dpo",
        "--out",
        &out.display().to_string(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exported 2 pairs"));
    let pairs: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        pairs,
        vec![
            json!({"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
                "preferred_output": [{"role": "assistant", "content": "Paris"}],
                "non_preferred_output": [{"role": "assistant", "content": "Lyon"}]}),
            json!({"input": {"messages": [{"role": "user", "content": "Say hi"}]},
                "preferred_output": [{"role": "assistant", "content": "Hello! How can I help?"}],
                "non_preferred_output": [{"role": "assistant", "content": "Go away"}]}),
        ]
    );
    // A smaller margin pairs the regeneration too; --min-score does not apply to dpo.
    let output = weir(&[
        "dataset",
        "export",
        "--dir",
        &dir.path().display().to_string(),
        "--format",
        "dpo",
        "--min-margin",
        "0.1",
    ]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 3);
    let output = weir(&[
        "dataset",
        "export",
        "--dir",
        &dir.path().display().to_string(),
        "--format",
        "dpo",
        "--min-score",
        "0.5",
    ]);
    assert_eq!(output.status.code(), Some(1));
}
