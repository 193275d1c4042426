//! `weir dataset export`: recorded requests as OpenAI fine-tuning chat JSONL or eval JSONL,
//! filtered and joined with feedback.
//!
//! Owns: choosing the records (`--model`, `--variant`, `--min-score`, `--since`) and shaping
//! them. Streams: feedback is read in a first pass (small), records in a second, one line at
//! a time. Must not: fail on a damaged line (see `read`).
//!
//! `openai-chat`: `{"messages": [...the request's messages..., the assistant's answer], "tools"?}`
//! for successful chat completions (the first choice; messages keep only `role`, `content`,
//! `name`, `tool_calls` and `tool_call_id`, the fields the fine-tuning format knows).
//! `eval`: `{"input", "ideal"?, "output", "metadata"}` for successful chat and text completions:
//! `input` is the messages (or the prompt), `output` the answer's text (the assistant message
//! when it calls tools), `ideal` the reviewer's `ideal` from feedback when given.
//! `dpo`: preference pairs, see `preference`.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::preference;
use super::read::{self, Entry, FeedbackMap, ReadError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAiChat,
    Eval,
    /// Preference pairs (see `preference`).
    Dpo,
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub model: Option<String>,
    pub variant: Option<String>,
    /// Only records whose feedback score is at least this (records without feedback drop out).
    pub min_score: Option<f64>,
    /// Only records from this time on.
    pub since: Option<SystemTime>,
    /// `dpo`: the least score difference that makes a pair (default 0.5).
    pub min_margin: Option<f64>,
}

/// Counts of one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub exported: usize,
    /// Damaged lines skipped.
    pub skipped: usize,
}

/// Writes `dir`'s matching records to `out` in `format`, warnings to `warn`.
pub fn export(
    dir: &Path,
    format: Format,
    options: &Options,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<Summary, ReadError> {
    let shaped_by_line = match format {
        Format::OpenAiChat => fine_tuning,
        Format::Eval => eval,
        Format::Dpo => {
            let margin = options.min_margin.unwrap_or(preference::DEFAULT_MIN_MARGIN);
            return preference::export(dir, options, margin, out, warn);
        }
    };
    let feedback = read::feedback(dir)?;
    let mut exported = 0;
    let skipped = read::for_each(dir, warn, |entry| {
        let Entry::Request(record) = entry else { return Ok(()) };
        if !selected(&record, options, &feedback) {
            return Ok(());
        }
        if let Some(shaped) = shaped_by_line(&record, &feedback) {
            serde_json::to_writer(&mut *out, &shaped).map_err(|err| ReadError::Output(err.into()))?;
            out.write_all(b"\n").map_err(ReadError::Output)?;
            exported += 1;
        }
        Ok(())
    })?;
    out.flush().map_err(ReadError::Output)?;
    Ok(Summary { exported, skipped })
}

pub(super) fn selected(record: &Value, options: &Options, feedback: &FeedbackMap) -> bool {
    let same =
        |want: &Option<String>, field: &str| want.as_deref().is_none_or(|want| want == read::text(record, field));
    if !same(&options.model, "model") || !same(&options.variant, "variant") {
        return false;
    }
    if let Some(min) = options.min_score {
        let score = feedback.get(read::text(record, "request_id")).map(|f| f.score);
        if score.is_none_or(|score| score < min) {
            return false;
        }
    }
    if let Some(since) = options.since {
        let ts = humantime::parse_rfc3339_weak(read::text(record, "ts")).ok();
        if ts.is_none_or(|ts| ts < since) {
            return false;
        }
    }
    true
}

/// The fine-tuning line of a successful chat completion.
fn fine_tuning(record: &Value, _feedback: &FeedbackMap) -> Option<Value> {
    if !read::succeeded(record) {
        return None;
    }
    let request = record.get("request")?;
    let messages = request.get("messages")?.as_array()?;
    let answer = record.pointer("/response/choices/0/message")?;
    let mut out: Vec<Value> = messages.iter().filter_map(message).collect();
    out.push(assistant(answer)?);
    let mut line = Map::new();
    line.insert("messages".into(), Value::Array(out));
    if let Some(tools) = request.get("tools").filter(|t| t.as_array().is_some_and(|t| !t.is_empty())) {
        line.insert("tools".into(), tools.clone());
    }
    Some(Value::Object(line))
}

/// A request message with only the fields the fine-tuning format knows.
pub(super) fn message(message: &Value) -> Option<Value> {
    let message = message.as_object()?;
    message.get("role")?.as_str()?;
    let mut out = Map::new();
    for field in ["role", "content", "name", "tool_calls", "tool_call_id"] {
        if let Some(value) = message.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), value.clone());
        }
    }
    if !out.contains_key("content") {
        out.insert("content".into(), Value::Null);
    }
    Some(Value::Object(out))
}

/// The assistant's answer: its content, and its tool calls when it made any.
pub(super) fn assistant(answer: &Value) -> Option<Value> {
    let mut out = Map::new();
    out.insert("role".into(), json!("assistant"));
    out.insert("content".into(), answer.get("content").cloned().unwrap_or(Value::Null));
    if let Some(calls) = answer.get("tool_calls").filter(|c| c.as_array().is_some_and(|c| !c.is_empty())) {
        out.insert("tool_calls".into(), calls.clone());
    } else if out["content"].is_null() {
        return None;
    }
    Some(Value::Object(out))
}

/// The eval line of a successful chat or text completion.
fn eval(record: &Value, feedback: &FeedbackMap) -> Option<Value> {
    if !read::succeeded(record) {
        return None;
    }
    let request = record.get("request")?;
    let (input, output) = if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        let answer = record.pointer("/response/choices/0/message")?;
        let output = match answer.get("tool_calls").filter(|c| c.as_array().is_some_and(|c| !c.is_empty())) {
            Some(_) => assistant(answer)?,
            None => answer.get("content").filter(|c| !c.is_null())?.clone(),
        };
        (Value::Array(messages.iter().filter_map(message).collect()), output)
    } else {
        let prompt = request.get("prompt")?.clone();
        (prompt, record.pointer("/response/choices/0/text")?.clone())
    };
    let id = read::text(record, "request_id");
    let joined = feedback.get(id);
    let mut metadata = Map::new();
    for field in [
        "request_id",
        "ts",
        "key",
        "model",
        "backend",
        "variant",
        "experiment",
        "latency_ms",
        "ttft_ms",
        "cost_usd",
        "usage",
        "cache",
    ] {
        metadata.insert(field.into(), record.get(field).cloned().unwrap_or(Value::Null));
    }
    metadata.insert("score".into(), joined.map_or(Value::Null, |f| json!(f.score)));
    metadata.insert("comment".into(), joined.and_then(|f| f.comment.clone()).map_or(Value::Null, Value::String));
    let mut line = Map::new();
    line.insert("input".into(), input);
    if let Some(ideal) = joined.and_then(|f| f.ideal.clone()) {
        line.insert("ideal".into(), Value::String(ideal));
    }
    line.insert("output".into(), output);
    line.insert("metadata".into(), Value::Object(metadata));
    Some(Value::Object(line))
}

/// `--since`: an RFC 3339 time (`2026-11-28T12:00:00Z`), a date (`2026-11-28`, midnight
/// UTC), or a duration back from `now` (`24h`, `7days`).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(&format!("{text}T00:00:00Z")) {
        return Ok(time);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return now.checked_sub(ago).ok_or_else(|| format!("`{text}` reaches before 1970"));
    }
    Err(format!("`{text}` is not a time (2026-11-28T12:00:00Z), a date (2026-11-28) or a duration (24h)"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_takes_times_dates_and_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("1970-01-02", now), Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400)));
        assert_eq!(parse_since("1970-01-01T00:01:00Z", now), Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(60)));
        assert_eq!(parse_since("1h", now), Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - 3600)));
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn tool_calls_are_kept_and_extra_message_fields_dropped() {
        let record = json!({
            "status": 200, "error": null,
            "request": {"messages": [{"role": "user", "content": "weather?", "extra": 1}], "tools": [{"type": "function", "function": {"name": "w"}}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}}]}
        });
        let line = fine_tuning(&record, &FeedbackMap::new()).unwrap();
        assert_eq!(line["messages"][0], json!({"role": "user", "content": "weather?"}));
        assert_eq!(line["messages"][1]["tool_calls"][0]["id"], "c1");
        assert!(line["messages"][1].get("refusal").is_none());
        assert_eq!(line["tools"][0]["function"]["name"], "w");
    }
}
