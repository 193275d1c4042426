//! Replays a stored JSON answer as the SSE stream the same request would have produced.
//!
//! Chat answers become `chat.completion.chunk` events per choice: the role, the content
//! (and refusal) in a few pieces, each tool call as its id and name then its arguments, the
//! finish reason, then — only when the client asked with `stream_options.include_usage` —
//! the usage chunk, and `data: [DONE]`. Text completions become `text_completion` chunks.
//! Responses and Messages answers are replayed (and streams read back) by `apis`, in
//! their own event shapes.
//! Must not: invent anything the stored answer does not hold (no usage chunk without usage).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::apis;
use crate::wire::Endpoint;

/// Content longer than this is sent in several deltas, cut at character boundaries.
const PIECE: usize = 128;

/// The stream of a stored answer in its API's shape: the Responses API's typed events, the
/// Messages API's events, or chat's chunks.
pub fn stream_of(endpoint: Endpoint, body: &[u8], include_usage: bool) -> Option<Bytes> {
    match endpoint {
        Endpoint::Responses => Some(Bytes::from(apis::responses::replay(&serde_json::from_slice(body).ok()?))),
        Endpoint::Messages => Some(Bytes::from(apis::messages::replay(&serde_json::from_slice(body).ok()?))),
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => to_sse(body, include_usage),
    }
}

/// A whole streamed answer read back as the JSON answer to store; `None` unless it ended
/// as its API ends a stream.
pub fn whole_of(endpoint: Endpoint, sse: &[u8]) -> Option<Vec<u8>> {
    let body = match endpoint {
        Endpoint::Responses => apis::responses::read_answer(sse, true)?.body,
        Endpoint::Messages => apis::messages::read_answer(sse, true)?.body,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
            crate::wire::assemble(sse, true).filter(|assembled| assembled.complete)?.body.into_value()
        }
    };
    serde_json::to_vec(&body).ok()
}

/// The SSE body for `body` (a stored non-streamed answer); `None` when it is not a chat or
/// text completion (embeddings never stream).
pub fn to_sse(body: &[u8], include_usage: bool) -> Option<Bytes> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let object = answer.get("object").and_then(Value::as_str)?;
    let chat = match object {
        "chat.completion" => true,
        "text_completion" => false,
        _ => return None,
    };
    let choices = answer.get("choices").and_then(Value::as_array)?;
    let mut out = Vec::with_capacity(body.len() * 2 + 256);
    let head = ChunkHead::of(&answer, chat);
    for (position, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or_else(|| json!(position));
        if chat {
            chat_choice(&mut out, &head, &index, choice);
        } else {
            text_choice(&mut out, &head, &index, choice);
        }
    }
    if include_usage {
        if let Some(usage) = answer.get("usage").filter(|u| !u.is_null()) {
            let mut chunk = head.chunk(Value::Array(Vec::new()));
            chunk.insert("usage".into(), usage.clone());
            event(&mut out, &Value::Object(chunk));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(Bytes::from(out))
}

/// The fields every chunk repeats.
struct ChunkHead {
    id: Value,
    object: &'static str,
    created: Value,
    model: Value,
    system_fingerprint: Option<Value>,
}

impl ChunkHead {
    fn of(answer: &Value, chat: bool) -> ChunkHead {
        let field = |name: &str| answer.get(name).cloned().unwrap_or(Value::Null);
        ChunkHead {
            id: field("id"),
            object: if chat { "chat.completion.chunk" } else { "text_completion" },
            created: answer.get("created").cloned().unwrap_or(json!(0)),
            model: field("model"),
            system_fingerprint: answer.get("system_fingerprint").filter(|v| !v.is_null()).cloned(),
        }
    }

    fn chunk(&self, choices: Value) -> Map<String, Value> {
        let mut chunk = Map::new();
        chunk.insert("id".into(), self.id.clone());
        chunk.insert("object".into(), Value::String(self.object.into()));
        chunk.insert("created".into(), self.created.clone());
        chunk.insert("model".into(), self.model.clone());
        if let Some(fp) = &self.system_fingerprint {
            chunk.insert("system_fingerprint".into(), fp.clone());
        }
        chunk.insert("choices".into(), choices);
        chunk
    }
}

fn chat_choice(out: &mut Vec<u8>, head: &ChunkHead, index: &Value, choice: &Value) {
    let message = choice.get("message").cloned().unwrap_or_else(|| json!({}));
    let role = message.get("role").cloned().unwrap_or_else(|| json!("assistant"));
    let delta_event = |out: &mut Vec<u8>, delta: Value, logprobs: Value, finish: Value| {
        let choice = json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        event(out, &Value::Object(head.chunk(choice)));
    };
    delta_event(out, json!({"role": role, "content": ""}), Value::Null, Value::Null);
    let mut logprobs = choice.get("logprobs").filter(|v| !v.is_null()).cloned();
    if let Some(content) = message.get("content").and_then(Value::as_str) {
        for piece in pieces(content) {
            delta_event(out, json!({"content": piece}), logprobs.take().unwrap_or(Value::Null), Value::Null);
        }
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        for piece in pieces(refusal) {
            delta_event(out, json!({"refusal": piece}), Value::Null, Value::Null);
        }
    }
    for (position, call) in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let function = call.get("function").cloned().unwrap_or_else(|| json!({}));
        let name = function.get("name").cloned().unwrap_or_else(|| json!(""));
        let opening = json!({
            "index": position,
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "type": call.get("type").cloned().unwrap_or_else(|| json!("function")),
            "function": {"name": name, "arguments": ""},
        });
        delta_event(out, json!({"tool_calls": [opening]}), Value::Null, Value::Null);
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or_default();
        for piece in pieces(arguments) {
            let part = json!({"index": position, "function": {"arguments": piece}});
            delta_event(out, json!({"tool_calls": [part]}), Value::Null, Value::Null);
        }
    }
    let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
    delta_event(out, json!({}), logprobs.unwrap_or(Value::Null), finish);
}

fn text_choice(out: &mut Vec<u8>, head: &ChunkHead, index: &Value, choice: &Value) {
    let text_event = |out: &mut Vec<u8>, text: &str, logprobs: Value, finish: Value| {
        let choice = json!([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]);
        event(out, &Value::Object(head.chunk(choice)));
    };
    let mut logprobs = choice.get("logprobs").filter(|v| !v.is_null()).cloned();
    let text = choice.get("text").and_then(Value::as_str).unwrap_or_default();
    for piece in pieces(text) {
        text_event(out, piece, logprobs.take().unwrap_or(Value::Null), Value::Null);
    }
    let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
    text_event(out, "", logprobs.unwrap_or(Value::Null), finish);
}

fn event(out: &mut Vec<u8>, chunk: &Value) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, chunk);
    out.extend_from_slice(b"\n\n");
}

/// `text` cut into pieces of about [`PIECE`] bytes, never inside a character.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(PIECE);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assemble;

    const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, ünïcode ✓","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

    #[test]
    fn chat_replay_assembles_back_to_the_same_answer() {
        let sse = to_sse(CHAT.as_bytes(), true).unwrap();
        let back = assemble(&sse, true).unwrap();
        assert!(back.complete);
        let original: Value = serde_json::from_str(CHAT).unwrap();
        assert_eq!(back.body["choices"][0]["message"], original["choices"][0]["message"]);
        assert_eq!(back.summary().finish_reasons, ["tool_calls"]);
        assert_eq!(back.body["usage"], original["usage"]);
        assert_eq!(back.body["id"], "chatcmpl-1");
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let sse = to_sse(CHAT.as_bytes(), false).unwrap();
        let text = std::str::from_utf8(&sse).unwrap();
        assert!(!text.contains("\"usage\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn long_content_is_cut_at_character_boundaries() {
        let text = "é".repeat(300);
        let parts: Vec<&str> = pieces(&text).collect();
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn text_completion_replays() {
        let body = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"abc","logprobs":null,"finish_reason":"stop"}]}"#;
        let back = assemble(&to_sse(body.as_bytes(), false).unwrap(), true).unwrap();
        assert_eq!(back.body["choices"][0]["text"], "abc");
        assert_eq!(back.summary().finish_reasons, ["stop"]);
    }

    #[test]
    fn embeddings_do_not_stream() {
        assert!(to_sse(br#"{"object":"list","data":[]}"#, false).is_none());
    }
}
