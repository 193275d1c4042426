//! Chat completion answers → Anthropic Messages answers, and Anthropic's error shape.
//!
//! Owns: the `message` object built from a `chat.completion`, the finish reason ↔
//! `stop_reason` mapping, and `{"type":"error","error":{type,message}}` with the error type
//! Anthropic uses for each status.
//! Must not: emit stream events (that is `stream`).

use serde_json::{Value, json};

use crate::apis::usage::Tokens;

/// A chat `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        // stop, and reasons added later.
        _ => "end_turn",
    }
}

/// Tool arguments as a `tool_use` input: Anthropic wants an object, chat sends a JSON
/// string (an empty one means no arguments).
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ if arguments.trim().is_empty() => json!({}),
        // Not an object: kept rather than lost.
        Ok(other) => json!({"value": other}),
        Err(_) => json!({"arguments": arguments}),
    }
}

/// A whole `chat.completion` as a Messages `message` with the given id.
pub fn from_completion(body: &[u8], id: &str, model: &str) -> Result<Value, String> {
    let chat: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let choice = chat
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| "the answer is not a chat.completion (no choices)".to_owned())?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    for field in ["reasoning_content", "reasoning"] {
        if let Some(thinking) = message.get(field).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
            break;
        }
    }
    for field in ["content", "refusal"] {
        if let Some(text) = message.get(field).and_then(Value::as_str).filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    for call in message.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let function = call.get("function").unwrap_or(&Value::Null);
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or_default();
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or_default(),
            "name": function.get("name").and_then(Value::as_str).unwrap_or_default(),
            "input": tool_input(arguments),
        }));
    }
    let usage = chat.get("usage").filter(|u| u.is_object()).map(Tokens::from_chat).unwrap_or_default();
    let model = chat.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(model);
    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage.to_anthropic(),
    }))
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// An OpenAI-shaped error body from a chat backend, in Anthropic's shape for `status`.
pub fn error_from_openai(body: &[u8], status: u16) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().chars().take(1000).collect());
    error_body(error_type(status), &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_with_tool_calls_and_cached_tokens_becomes_a_message() {
        let chat = json!({"id": "c", "object": "chat.completion", "model": "gpt", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "let me see", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"x\":1}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 60}}});
        let message = from_completion(chat.to_string().as_bytes(), "msg_1", "public").unwrap();
        assert_eq!(
            message,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "gpt",
                "content": [{"type": "text", "text": "let me see"}, {"type": "tool_use", "id": "call_1", "name": "get", "input": {"x": 1}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 60, "output_tokens": 9}})
        );
    }

    #[test]
    fn openai_errors_take_anthropics_shape() {
        let body = br#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
        assert_eq!(error_from_openai(body, 429), error_body("rate_limit_error", "slow down"));
        assert_eq!(error_from_openai(b"plain", 500), error_body("api_error", "plain"));
    }
}
