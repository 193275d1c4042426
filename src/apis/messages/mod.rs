//! The Anthropic Messages API (`POST /v1/messages`) over chat completions, and read back.
//!
//! Owns: the request translation for non-Anthropic backends (`request`), chat answers →
//! Messages answers and errors (`response`), chat SSE → Messages SSE (`stream`), reading a
//! Messages answer back, JSON or SSE, translated or native ([`read_answer`]), and replaying
//! a whole message as its event stream ([`replay`]).
//! Must not: touch a request bound for a `kind: anthropic` backend beyond the model name.

pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value, json};

use super::sse::{Event, SseReader, write_event};
use super::usage::Tokens;

pub use request::{Translated, translate};
pub use stream::MessagesStream;

/// A Messages answer read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The `message` object (a stream folded into the message it delivered).
    pub body: Value,
    pub usage: Option<Tokens>,
    pub stop_reason: Option<String>,
    pub model: Option<String>,
}

/// Reads a captured Messages answer; `None` when it is not one, or a stream did not end
/// with `message_stop`.
pub fn read_answer(bytes: &[u8], sse: bool) -> Option<Answer> {
    let body = if sse { fold_stream(bytes)? } else { serde_json::from_slice::<Value>(bytes).ok()? };
    if body.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let usage = body.get("usage").filter(|u| u.is_object()).map(Tokens::from_anthropic);
    let stop_reason = body.get("stop_reason").and_then(Value::as_str).map(str::to_owned);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    Some(Answer { body, usage, stop_reason, model })
}

/// Folds a Messages event stream into the message it delivered.
fn fold_stream(bytes: &[u8]) -> Option<Value> {
    let mut message: Option<Value> = None;
    // Per block index: the block, and the partial JSON of a tool_use input.
    let mut blocks: Vec<(Value, String)> = Vec::new();
    let mut stopped = false;
    let mut failed = false;
    let mut on = |event: Event<'_>| {
        let Ok(data) = serde_json::from_slice::<Value>(event.data) else {
            failed = true;
            return Ok(());
        };
        let index = data.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok());
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => message = data.get("message").cloned(),
            Some("content_block_start") => {
                if let (Some(index), Some(block)) = (index, data.get("content_block")) {
                    if index == blocks.len() {
                        blocks.push((block.clone(), String::new()));
                    }
                }
            }
            Some("content_block_delta") => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some((block, partial)) = index.and_then(|i| blocks.get_mut(i)) {
                    apply_delta(block, partial, delta);
                }
            }
            Some("message_delta") => {
                if let Some(message) = message.as_mut() {
                    for field in ["stop_reason", "stop_sequence"] {
                        if let Some(value) = data.get("delta").and_then(|d| d.get(field)) {
                            message[field] = value.clone();
                        }
                    }
                    if let Some(usage) = data.get("usage").and_then(Value::as_object) {
                        merge_usage(message, usage);
                    }
                }
            }
            Some("message_stop") => stopped = true,
            Some("error") => failed = true,
            _ => {}
        }
        Ok(())
    };
    let mut reader = SseReader::new();
    reader.push(bytes, &mut on).ok()?;
    reader.finish(&mut on).ok()?;
    if failed || !stopped {
        return None;
    }
    let mut message = message?;
    let content = blocks
        .into_iter()
        .map(|(mut block, partial)| {
            if block.get("type").and_then(Value::as_str) == Some("tool_use") && !partial.is_empty() {
                block["input"] = response::tool_input(&partial);
            }
            block
        })
        .collect();
    message["content"] = Value::Array(content);
    Some(message)
}

fn apply_delta(block: &mut Value, partial: &mut String, delta: &Value) {
    let append = |block: &mut Value, field: &str, more: Option<&Value>| {
        let more = more.and_then(Value::as_str).unwrap_or_default();
        let joined = format!("{}{more}", block.get(field).and_then(Value::as_str).unwrap_or_default());
        block[field] = Value::String(joined);
    };
    match delta.get("type").and_then(Value::as_str) {
        Some("text_delta") => append(block, "text", delta.get("text")),
        Some("thinking_delta") => append(block, "thinking", delta.get("thinking")),
        Some("signature_delta") => append(block, "signature", delta.get("signature")),
        Some("input_json_delta") => partial.push_str(delta.get("partial_json").and_then(Value::as_str).unwrap_or("")),
        _ => {}
    }
}

fn merge_usage(message: &mut Value, later: &Map<String, Value>) {
    if !message.get("usage").is_some_and(Value::is_object) {
        message["usage"] = json!({});
    }
    if let Some(usage) = message.get_mut("usage").and_then(Value::as_object_mut) {
        for (field, value) in later.iter().filter(|(_, v)| !v.is_null()) {
            usage.insert(field.clone(), value.clone());
        }
    }
}

/// A whole message as the event stream that would have delivered it.
pub fn replay(message: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    let usage = message.get("usage").filter(|u| u.is_object()).map(Tokens::from_anthropic).unwrap_or_default();
    start["usage"] = Tokens { output: usage.output.min(1), ..usage }.to_anthropic();
    write_event(&mut out, "message_start", &json!({"type": "message_start", "message": start}));
    write_event(&mut out, "ping", &json!({"type": "ping"}));
    let blocks = message.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (index, block) in blocks.iter().enumerate() {
        let mut empty = block.clone();
        let delta = match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                empty["text"] = json!("");
                Some(json!({"type": "text_delta", "text": block.get("text")}))
            }
            Some("thinking") => {
                empty["thinking"] = json!("");
                empty["signature"] = json!("");
                Some(json!({"type": "thinking_delta", "thinking": block.get("thinking")}))
            }
            Some("tool_use") => {
                empty["input"] = json!({});
                let input = block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into());
                Some(json!({"type": "input_json_delta", "partial_json": input}))
            }
            _ => None,
        };
        write_event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": empty}),
        );
        if let Some(delta) = delta {
            write_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        if let Some(signature) = block.get("signature").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            let delta = json!({"type": "signature_delta", "signature": signature});
            write_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        write_event(&mut out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
    }
    let data = json!({
        "type": "message_delta",
        "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")},
        "usage": usage.to_anthropic(),
    });
    write_event(&mut out, "message_delta", &data);
    write_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}
