//! Anthropic Messages answers → OpenAI shapes: a whole `message` → `chat.completion`, an
//! error body → OpenAI's error body, and the finish-reason and usage mappings the stream
//! translator shares.
//!
//! Must not: buffer anything itself (the body wrapper hands it whole, bounded, answers).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Anthropic's `usage`. Input counts are disjoint: cache reads and writes are not part of
/// `input_tokens`, unlike OpenAI's `prompt_tokens`, which includes cached tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AnthropicUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

/// OpenAI's `usage`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct OpenAiUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PromptDetails {
    pub cached_tokens: u64,
    /// Not OpenAI's: Anthropic's cache writes, which OpenAI has no field for.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AnthropicUsage {
    pub fn to_openai(self) -> OpenAiUsage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self.input_tokens + cache_read + self.cache_creation_input_tokens.unwrap_or(0);
        OpenAiUsage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens,
            total_tokens: prompt + self.output_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: cache_read,
                cache_write_tokens: self.cache_creation_input_tokens.unwrap_or(0),
            },
        }
    }

    /// Folds in a later (cumulative) report: fields it carries replace ours.
    pub fn update(&mut self, later: &Value) {
        let field = |name: &str| later.get(name).and_then(Value::as_u64);
        if let Some(n) = field("input_tokens") {
            self.input_tokens = n;
        }
        if let Some(n) = field("output_tokens") {
            self.output_tokens = n;
        }
        if let Some(n) = field("cache_creation_input_tokens") {
            self.cache_creation_input_tokens = Some(n);
        }
        if let Some(n) = field("cache_read_input_tokens") {
            self.cache_read_input_tokens = Some(n);
        }
    }
}

/// `stop_reason` → `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and reasons added later.
        _ => "stop",
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    id: String,
    model: String,
    content: Vec<Block>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum Block {
    #[serde(rename = "text")]
    Text { text: String },
    #[serde(rename = "tool_use")]
    ToolUse { id: String, name: String, input: Value },
    /// Thinking, citations-only and block types added later carry nothing OpenAI can show.
    #[serde(other)]
    Other,
}

/// A whole Messages answer as a `chat.completion`.
pub fn completion(body: &[u8], created: u64) -> Result<Vec<u8>, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|err| format!("the Anthropic answer is not a message: {err}"))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: part } => text.push_str(&part),
            Block::ToolUse { id, name, input } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            })),
            Block::Other => {}
        }
    }
    let content = if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) };
    let mut assistant = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty()
        && let Some(map) = assistant.as_object_mut()
    {
        map.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let answer = json!({
        "id": message.id,
        "object": "chat.completion",
        "created": created,
        "model": message.model,
        "choices": [{
            "index": 0,
            "message": assistant,
            "logprobs": null,
            "finish_reason": message.stop_reason.as_deref().map(finish_reason),
        }],
        "usage": message.usage.to_openai(),
    });
    serde_json::to_vec(&answer).map_err(|err| err.to_string())
}

/// Anthropic's `{type: error, error: {type, message}}` as OpenAI's error body, keeping the
/// message and naming Anthropic's error type in `code`. A body of another shape becomes
/// the message itself.
pub fn error_body(body: &[u8], client_error: bool) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().chars().take(1000).collect());
    let code = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let kind = if client_error { "invalid_request_error" } else { "api_error" };
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}}).to_string().into_bytes()
}
