//! The SPEC §6 record of one request, and of one feedback.
//!
//! Owns: [`Source`], the small owned copy of a finished [`Record`] handed to the writers
//! (reference-counted body handles, the assembled answer, names and numbers), and turning it
//! into one redacted JSON line. Must not: do the JSON work on the request's task — the
//! writer thread calls [`Source::line`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::redact::{Redacted, Redactor};
use crate::wire::{Assembled, PromptUse, Record, Usage};

/// What a dataset record is made from, taken from a finished [`Record`].
#[derive(Debug)]
pub struct Source {
    pub request_id: String,
    /// The `x-request-id` the client sent, if any.
    pub client_request_id: Option<String>,
    /// When the request arrived.
    pub ts: SystemTime,
    pub key: String,
    pub model: String,
    pub backend: String,
    pub variant: String,
    pub experiment: Option<String>,
    pub endpoint: Option<&'static str>,
    pub stream: bool,
    /// The client's body (a handle, not a copy), as rendered when it named a prompt.
    pub request: Bytes,
    /// The prompt rendered into the request: `{id, version, variables}`.
    pub prompt: Option<PromptUse>,
    /// The answer read back (its `body` is one OpenAI JSON body, streams assembled), shared
    /// with the request's record; `None` for errors.
    pub response: Option<Arc<Assembled>>,
    pub usage: Option<Usage>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub cost_usd: Option<f64>,
    pub cache: &'static str,
    pub status: u16,
    pub error: Option<String>,
    pub outcome: &'static str,
}

impl Source {
    pub fn from_record(record: &Record) -> Source {
        Source {
            request_id: record.request_id.clone(),
            client_request_id: record.client_request_id.clone(),
            ts: SystemTime::now().checked_sub(record.duration).unwrap_or_else(SystemTime::now),
            key: record.key.clone(),
            model: record.model.clone(),
            backend: record.backend.clone(),
            variant: record.variant.clone(),
            experiment: record.experiment.clone(),
            endpoint: record.endpoint.map(crate::wire::Endpoint::as_str),
            stream: record.stream,
            request: record.request_body.clone(),
            prompt: record.prompt.clone(),
            response: record.assembled.clone(),
            usage: record.usage,
            latency: record.duration,
            ttft: record.first_byte,
            cost_usd: record.cost_usd,
            cache: record.cache.as_str(),
            status: record.status,
            error: record.error.clone(),
            outcome: record.outcome.as_str(),
        }
    }

    /// Roughly the bytes this record keeps alive while it waits for the disk: the client's
    /// body, the assembled answer and the names (the writer's queue is bounded by this).
    pub fn weight(&self) -> usize {
        let names = [&self.request_id, &self.key, &self.model, &self.backend, &self.variant];
        let names: usize = names.iter().map(|s| s.len()).sum();
        let extra = self.experiment.as_ref().map_or(0, String::len) + self.error.as_ref().map_or(0, String::len);
        std::mem::size_of::<Source>()
            + self.request.len()
            + self.response.as_ref().map_or(0, |a| a.body.raw().map_or_else(|| value_weight(&a.body), Bytes::len))
            + names
            + extra
    }

    /// The record as one JSON line (with its `\n`), every string redacted by `redactor`.
    /// Redaction happens as the line is written: no copy of the record or its bodies is made.
    pub fn line(&self, redactor: &Redactor) -> Result<Vec<u8>, serde_json::Error> {
        let ts = rfc3339(self.ts);
        let parsed_request: Value;
        let request = match request_body(&self.request) {
            body if redactor.is_empty() => body,
            Body::Raw(raw) if redactor.leaves_alone(raw.get()) => Body::Raw(raw),
            Body::Raw(raw) => {
                parsed_request = serde_json::from_str(raw.get())?;
                Body::Redacted(redactor.over(&parsed_request))
            }
            Body::Owned(value) => {
                parsed_request = value;
                Body::Redacted(redactor.over(&parsed_request))
            }
            other => other,
        };
        let response = match &self.response {
            None => Body::Null,
            // Most answers hold nothing to redact: copied as they came, no tree built.
            Some(answer) => match answer.body.raw().and_then(single_line_json) {
                Some(raw) if redactor.leaves_alone(raw.get()) => Body::Raw(raw),
                _ if redactor.is_empty() => Body::Borrowed(&answer.body),
                _ => Body::Redacted(redactor.over(&answer.body)),
            },
        };
        let record = Row {
            // weir's own values (its id, the time, fixed words) hold nothing to redact.
            request_id: Cow::Borrowed(&self.request_id),
            client_request_id: self.client_request_id.as_deref().map(|s| redactor.text(s)),
            ts: Cow::Borrowed(&ts),
            key: redactor.text(&self.key),
            model: redactor.text(&self.model),
            backend: redactor.text(&self.backend),
            variant: redactor.text(&self.variant),
            experiment: self.experiment.as_deref().map(|s| redactor.text(s)),
            endpoint: self.endpoint.map(Cow::Borrowed),
            stream: self.stream,
            request,
            prompt: self.prompt.as_ref().map(|p| PromptRow {
                id: redactor.text(&p.id),
                version: redactor.text(&p.version),
                variables: redactor.over(&p.variables),
            }),
            response,
            usage: self.usage.map(UsageRow::from),
            latency_ms: millis(self.latency),
            ttft_ms: self.ttft.map(millis),
            cost_usd: self.cost_usd,
            cache: Cow::Borrowed(self.cache),
            status: self.status,
            error: self.error.as_deref().map(|s| redactor.text(s)),
            outcome: Cow::Borrowed(self.outcome),
        };
        to_line(&record)
    }
}

/// Roughly the heap a JSON value holds: its strings and keys, and a node's size for each
/// node. Iterative, so a deep value costs no stack.
pub fn value_weight(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        total = total.saturating_add(NODE);
        match value {
            Value::String(s) => total = total.saturating_add(s.len()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    total = total.saturating_add(key.len().saturating_add(NODE));
                    stack.push(item);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

/// A feedback line: `{"type":"feedback","request_id","score","comment","ts",...}`.
pub fn feedback_line(feedback: &Value, redactor: &Redactor) -> Result<Vec<u8>, serde_json::Error> {
    to_line(&redactor.over(feedback))
}

#[derive(Serialize)]
struct Row<'a> {
    request_id: Cow<'a, str>,
    client_request_id: Option<Cow<'a, str>>,
    ts: Cow<'a, str>,
    key: Cow<'a, str>,
    model: Cow<'a, str>,
    backend: Cow<'a, str>,
    variant: Cow<'a, str>,
    experiment: Option<Cow<'a, str>>,
    endpoint: Option<Cow<'a, str>>,
    stream: bool,
    request: Body<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptRow<'a>>,
    response: Body<'a>,
    usage: Option<UsageRow>,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    cost_usd: Option<f64>,
    cache: Cow<'a, str>,
    status: u16,
    error: Option<Cow<'a, str>>,
    outcome: Cow<'a, str>,
}

/// `prompt: {id, version, variables}`, next to the rendered request.
#[derive(Serialize)]
struct PromptRow<'a> {
    id: Cow<'a, str>,
    version: Cow<'a, str>,
    variables: Redacted<'a, serde_json::Map<String, Value>>,
}

/// A JSON body embedded in a record.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    /// Valid single-line JSON, copied as it came (no tree built).
    Raw(&'a RawValue),
    Owned(Value),
    Borrowed(&'a Value),
    /// A body whose strings are redacted as it is written.
    Redacted(Redacted<'a, Value>),
    Null,
}

/// `bytes` as they are when they are valid JSON on one line (a JSONL record must be).
fn single_line_json(bytes: &Bytes) -> Option<&RawValue> {
    if memchr::memchr2(b'\n', b'\r', bytes).is_some() {
        return None;
    }
    serde_json::from_slice::<&RawValue>(bytes).ok()
}

/// The request body as JSON: as it came when it is valid JSON on one line, re-serialised
/// when it spans lines (a JSONL record must not), or as a string when it is not JSON.
fn request_body(bytes: &Bytes) -> Body<'_> {
    if bytes.is_empty() {
        return Body::Null;
    }
    if let Some(raw) = single_line_json(bytes) {
        return Body::Raw(raw);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => Body::Owned(value),
        Err(_) => Body::Owned(Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

fn to_line(value: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// `usage: {prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details}`.
#[derive(Serialize)]
struct UsageRow {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedRow,
}

#[derive(Serialize)]
struct CachedRow {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

impl From<Usage> for UsageRow {
    fn from(usage: Usage) -> UsageRow {
        UsageRow {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total(),
            prompt_tokens_details: CachedRow {
                cached_tokens: usage.cached_tokens,
                cache_write_tokens: usage.cache_write_tokens,
            },
        }
    }
}

/// Milliseconds with microsecond precision.
fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

/// `2026-11-28T21:05:03.123Z`.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Redaction;

    fn source(request: &'static str) -> Source {
        Source {
            request_id: "req_1".into(),
            client_request_id: Some("client-7".into()),
            ts: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_300_000),
            key: "team".into(),
            model: "chat".into(),
            backend: "up".into(),
            variant: "control".into(),
            experiment: Some("exp".into()),
            endpoint: Some("chat"),
            stream: false,
            request: Bytes::from_static(request.as_bytes()),
            prompt: None,
            response: Some(Arc::new(Assembled::new(
                json!({"choices": [{"message": {"role": "assistant", "content": "mail me at a@b.io"}}]}).into(),
                None,
                crate::wire::AnswerSummary::default(),
                true,
            ))),
            usage: Some(Usage { prompt_tokens: 3, completion_tokens: 4, cached_tokens: 0, cache_write_tokens: 0 }),
            latency: Duration::from_micros(12_345),
            ttft: None,
            cost_usd: Some(0.5),
            cache: "bypass",
            status: 200,
            error: None,
            outcome: "completed",
        }
    }

    fn parse(line: &[u8]) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(!line[..line.len() - 1].contains(&b'\n'), "one line");
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn a_json_answer_is_copied_as_it_came_or_put_on_one_line() {
        for (answer, on_one_line) in [
            (r#"{"id":"x","choices":[{"finish_reason":"stop"}]}"#, true),
            ("{\n  \"id\": \"x\",\n  \"choices\": []\n}", false),
        ] {
            let mut source = source(r#"{"model":"chat","messages":[]}"#);
            source.response = crate::wire::assemble(answer.as_bytes(), false).map(Arc::new);
            let line = source.line(&Redactor::default()).unwrap();
            let written = parse(&line)["response"].clone();
            assert_eq!(written, serde_json::from_str::<Value>(answer).unwrap());
            let copied = line.windows(answer.len()).any(|w| w == answer.as_bytes());
            assert_eq!(copied, on_one_line, "{answer}");
        }
    }

    #[test]
    fn record_has_the_spec_fields() {
        let line = source(r#"{"model":"chat","messages":[]}"#).line(&Redactor::default()).unwrap();
        let v = parse(&line);
        for field in [
            "request_id",
            "client_request_id",
            "ts",
            "key",
            "model",
            "backend",
            "variant",
            "experiment",
            "request",
            "response",
            "usage",
            "latency_ms",
            "ttft_ms",
            "cost_usd",
            "cache",
            "status",
            "error",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert_eq!(v["ts"], "2025-11-28T03:20:00.000Z");
        assert_eq!(v["request"]["model"], "chat");
        assert_eq!(v["latency_ms"], 12.345);
        assert_eq!(v["usage"]["total_tokens"], 7);
        assert_eq!(v["response"]["choices"][0]["message"]["content"], "mail me at a@b.io");
    }

    #[test]
    fn multi_line_and_invalid_bodies_stay_on_one_line() {
        let v = parse(&source("{\n \"model\": \"chat\"\n}").line(&Redactor::default()).unwrap());
        assert_eq!(v["request"]["model"], "chat");
        let v = parse(&source("not json\n").line(&Redactor::default()).unwrap());
        assert_eq!(v["request"], "not json\n");
    }

    #[test]
    fn redaction_covers_request_and_response() {
        let redactor = Redactor::new("t", &[Redaction::Email]);
        let line = source(r#"{"messages":[{"role":"user","content":"I am x@y.com"}]}"#).line(&redactor).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(!text.contains("x@y.com") && !text.contains("a@b.io"), "{text}");
        let v = parse(&line);
        assert_eq!(v["request"]["messages"][0]["content"], "I am [REDACTED:email]");
    }

    #[test]
    fn redaction_covers_every_string_of_the_record() {
        let redactor = Redactor::new("t", &[Redaction::Email]);
        let mut source = source("{\"messages\":\n[{\"role\":\"user\",\"content\":[\"x@y.com\"]}]}");
        source.key = "ops@corp.io".into();
        source.error = Some("upstream said: write to help@up.dev".into());
        let variables = json!({"who": "me@home.net", "n": 3}).as_object().cloned().unwrap();
        source.prompt = Some(PromptUse { id: "p".into(), version: "v1".into(), variables });
        let line = source.line(&redactor).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(!text.contains('@'), "{text}");
        let v = parse(&line);
        // A request spanning lines is parsed, redacted and written on one line.
        assert_eq!(v["request"]["messages"][0]["content"][0], "[REDACTED:email]");
        assert_eq!(v["key"], "[REDACTED:email]");
        assert_eq!(v["error"], "upstream said: write to [REDACTED:email]");
        assert_eq!(v["prompt"]["variables"], json!({"who": "[REDACTED:email]", "n": 3}));
        assert_eq!(v["response"]["choices"][0]["message"]["role"], "assistant");
    }

    #[test]
    fn bodies_with_nothing_to_redact_are_copied_and_others_redacted() {
        let redactor = Redactor::new("t", &[Redaction::Email, Redaction::Phone, Redaction::Key]);
        let request = r#"{"model":"chat","messages":[{"role":"user","content":"hello"}]}"#;
        for (answer, copied) in [
            (r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"hi there"}}]}"#, true),
            (r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"mail a@b.io"}}]}"#, false),
            (r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"mail a\u0040b.io"}}]}"#, false),
        ] {
            let mut source = source(request);
            source.response = crate::wire::assemble(answer.as_bytes(), false).map(Arc::new);
            let line = source.line(&redactor).unwrap();
            let contains = |needle: &str| line.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(contains(request), "a request with nothing to redact is copied");
            assert_eq!(contains(answer), copied, "{answer}");
            let written = parse(&line)["response"].to_string();
            assert!(!written.contains("a@b.io"), "{written}");
            // Copied or not, the line says what the redacted tree says.
            let tree = serde_json::to_value(redactor.over(&serde_json::from_str::<Value>(answer).unwrap())).unwrap();
            assert_eq!(parse(&line)["response"], tree);
        }
    }
}
