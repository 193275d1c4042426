//! The OpenAI Responses API (`POST /v1/responses`) over chat completions.
//!
//! Owns: the request translation (`request`), response objects (`response`), the chat SSE →
//! Responses events translator (`stream`), reading a Responses answer back ([`read_answer`],
//! for usage, datasets and the cache) and replaying a stored response as events
//! ([`replay`], for a streamed request served from a JSON answer).
//! Must not: store responses (the request path does, through the state store).

pub mod request;
pub mod response;
pub mod stream;

#[cfg(test)]
mod tests;

use serde_json::{Value, json};

use super::sse::SseReader;
use super::usage::Tokens;
use response::Status;
use stream::Emitter;

pub use request::{Translated, translate};
pub use response::Shell;
pub use stream::ResponsesStream;

/// A Responses answer read back: the response object, whether it came whole or streamed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub body: Value,
    pub usage: Option<Tokens>,
    /// `completed`, `incomplete`, `failed`, ...
    pub status: String,
    pub model: Option<String>,
}

/// Reads a captured answer (a response object, or its event stream); `None` when it is not
/// one or the stream did not end with a final response event.
pub fn read_answer(bytes: &[u8], sse: bool) -> Option<Answer> {
    let body = if sse { final_response(bytes)? } else { serde_json::from_slice::<Value>(bytes).ok()? };
    if body.get("object").and_then(Value::as_str) != Some("response") {
        return None;
    }
    let usage = body.get("usage").filter(|u| u.is_object()).map(Tokens::from_responses);
    let status = body.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    Some(Answer { body, usage, status, model })
}

fn final_response(bytes: &[u8]) -> Option<Value> {
    let mut reader = SseReader::new();
    let mut last = None;
    let mut failed = false;
    let mut on = |event: super::sse::Event<'_>| {
        let Ok(mut data) = serde_json::from_slice::<Value>(event.data) else { return Ok(()) };
        match data.get("type").and_then(Value::as_str) {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                last = data.get_mut("response").map(Value::take);
            }
            Some("error") => failed = true,
            _ => {}
        }
        Ok(())
    };
    reader.push(bytes, &mut on).ok()?;
    reader.finish(&mut on).ok()?;
    if failed { None } else { last }
}

/// A whole response object as the event stream that would have delivered it.
pub fn replay(response: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut emitter = Emitter::default();
    let mut shell = response.clone();
    shell["status"] = json!("in_progress");
    shell["output"] = json!([]);
    shell["usage"] = Value::Null;
    shell["incomplete_details"] = Value::Null;
    if let Some(map) = shell.as_object_mut() {
        map.remove("completed_at");
    }
    emitter.emit(&mut out, "response.created", json!({"response": shell}));
    emitter.emit(&mut out, "response.in_progress", json!({"response": shell}));
    let items = response.get("output").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (output_index, item) in items.iter().enumerate() {
        replay_item(&mut emitter, output_index, item, &mut out);
    }
    let kind = match response.get("status").and_then(Value::as_str) {
        Some("incomplete") => "response.incomplete",
        Some("failed") => "response.failed",
        _ => "response.completed",
    };
    emitter.emit(&mut out, kind, json!({"response": response}));
    out
}

fn replay_item(emitter: &mut Emitter, output_index: usize, item: &Value, out: &mut Vec<u8>) {
    let id = item.get("id").cloned().unwrap_or(Value::Null);
    let mut added = item.clone();
    added["status"] = json!(Status::InProgress.as_str());
    match item.get("type").and_then(Value::as_str) {
        Some("message") => {
            added["content"] = json!([]);
            emitter.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": added}));
            let parts = item.get("content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for (content_index, part) in parts.iter().enumerate() {
                let at = |mut fields: Value| {
                    fields["item_id"] = id.clone();
                    fields["output_index"] = json!(output_index);
                    fields["content_index"] = json!(content_index);
                    fields
                };
                let refusal = part.get("type").and_then(Value::as_str) == Some("refusal");
                let text = part.get(if refusal { "refusal" } else { "text" }).cloned().unwrap_or(json!(""));
                let mut empty = part.clone();
                empty[if refusal { "refusal" } else { "text" }] = json!("");
                emitter.emit(out, "response.content_part.added", at(json!({"part": empty})));
                if refusal {
                    emitter.emit(out, "response.refusal.delta", at(json!({"delta": text})));
                    emitter.emit(out, "response.refusal.done", at(json!({"refusal": text})));
                } else {
                    emitter.emit(out, "response.output_text.delta", at(json!({"delta": text, "logprobs": []})));
                    emitter.emit(out, "response.output_text.done", at(json!({"text": text, "logprobs": []})));
                }
                emitter.emit(out, "response.content_part.done", at(json!({"part": part})));
            }
        }
        Some("function_call") => {
            added["arguments"] = json!("");
            emitter.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": added}));
            let arguments = item.get("arguments").cloned().unwrap_or(json!(""));
            let fields = json!({"item_id": id, "output_index": output_index, "delta": arguments});
            emitter.emit(out, "response.function_call_arguments.delta", fields);
            let name = item.get("name").cloned().unwrap_or(Value::Null);
            let fields = json!({"item_id": id, "output_index": output_index, "arguments": arguments, "name": name});
            emitter.emit(out, "response.function_call_arguments.done", fields);
        }
        _ => emitter.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": added})),
    }
    emitter.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
}
