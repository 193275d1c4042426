//! OpenAI chat request → Anthropic Messages request.
//!
//! Owns: the field-by-field mapping and its refusals. System (and developer) messages
//! become `system`; user, assistant and tool turns become alternating `messages` (tool
//! results go into a user turn as `tool_result` blocks; consecutive turns of one role are
//! merged, as Anthropic requires alternation); images given by URL or `data:` URL, tools,
//! `tool_choice`, `stop`, `max_tokens`, sampling and `user` map to their Anthropic forms.
//! A parameter Anthropic cannot honour is refused with its name rather than dropped.
//! Must not: send anything, or look at the response.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// `max_tokens` is required by Anthropic; OpenAI lets it default to "as much as fits".
/// 4096 fits every current Claude model's output limit. A target's `params` can set another.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A request the adapter cannot translate, naming the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub param: String,
    pub message: String,
}

fn refuse(param: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal { param: param.into(), message: message.into() }
}

/// What the response translation needs to know about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translated {
    pub stream: bool,
    /// `stream_options.include_usage`: end the stream with a usage chunk.
    pub include_usage: bool,
}

#[derive(Debug, Serialize)]
pub struct MessagesRequest {
    model: String,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Value>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

#[derive(Debug, Serialize)]
struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

/// Translates a parsed OpenAI chat request (the target's `params` already merged in).
pub fn translate(mut request: Map<String, Value>) -> Result<(MessagesRequest, Translated), Refusal> {
    let model = match request.remove("model") {
        Some(Value::String(model)) => model,
        _ => return Err(refuse("model", "'model' must be a string")),
    };
    let mut out = MessagesRequest {
        model,
        max_tokens: DEFAULT_MAX_TOKENS,
        system: Vec::new(),
        messages: Vec::new(),
        temperature: None,
        top_p: None,
        top_k: None,
        stop_sequences: Vec::new(),
        stream: false,
        tools: Vec::new(),
        tool_choice: None,
        metadata: None,
    };
    let mut include_usage = false;
    let mut parallel_tool_calls = true;
    // `max_completion_tokens` is the newer name; when both are sent it wins.
    if let Some(limit) = request.remove("max_completion_tokens").filter(|v| !v.is_null()) {
        out.max_tokens = positive_int("max_completion_tokens", &limit)?;
        request.remove("max_tokens");
    }
    for (field, value) in request {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "messages" => messages(&value, &mut out)?,
            "max_tokens" => out.max_tokens = positive_int("max_tokens", &value)?,
            "temperature" | "top_p" | "top_k" => {
                if !value.is_number() {
                    return Err(refuse(&field, format!("'{field}' must be a number")));
                }
                match field.as_str() {
                    "temperature" => out.temperature = Some(value),
                    "top_p" => out.top_p = Some(value),
                    _ => out.top_k = Some(value),
                }
            }
            "stop" => out.stop_sequences = stop_sequences(&value)?,
            "stream" => out.stream = value.as_bool().ok_or_else(|| refuse("stream", "'stream' must be a boolean"))?,
            "stream_options" => {
                include_usage = value.get("include_usage").and_then(Value::as_bool).unwrap_or(false);
            }
            "tools" => out.tools = tools(&value)?,
            "tool_choice" => out.tool_choice = Some(tool_choice(&value)?),
            "parallel_tool_calls" => {
                parallel_tool_calls =
                    value.as_bool().ok_or_else(|| refuse(&field, "'parallel_tool_calls' must be a boolean"))?;
            }
            "user" => {
                let user = value.as_str().ok_or_else(|| refuse("user", "'user' must be a string"))?;
                out.metadata = Some(json!({"user_id": user}));
            }
            // Harmless when neutral; refused when they ask for what Anthropic cannot do.
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value == Value::Bool(false) => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "logit_bias" if value.as_object().is_some_and(Map::is_empty) => {}
            "response_format" if value.get("type").and_then(Value::as_str) == Some("text") => {}
            "modalities" if value == json!(["text"]) => {}
            // OpenAI-side bookkeeping with no effect on the answer.
            "store" | "metadata" | "service_tier" => {}
            "n" | "logprobs" | "top_logprobs" | "presence_penalty" | "frequency_penalty" | "logit_bias" | "seed"
            | "response_format" | "modalities" | "audio" | "prediction" | "reasoning_effort" | "functions"
            | "function_call" | "web_search_options" => {
                return Err(refuse(&field, format!("'{field}' is not supported by Anthropic backends")));
            }
            _ => return Err(refuse(&field, format!("unknown parameter '{field}' for an Anthropic backend"))),
        }
    }
    if out.messages.is_empty() {
        return Err(refuse("messages", "Anthropic needs at least one user or assistant message"));
    }
    if !parallel_tool_calls && !out.tools.is_empty() {
        let choice = out.tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(choice) = choice.as_object_mut().filter(|c| c.get("type") != Some(&json!("none"))) {
            choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    let translated = Translated { stream: out.stream, include_usage: include_usage && out.stream };
    Ok((out, translated))
}

fn positive_int(field: &str, value: &Value) -> Result<u64, Refusal> {
    value.as_u64().filter(|n| *n > 0).ok_or_else(|| refuse(field, format!("'{field}' must be a positive integer")))
}

fn stop_sequences(value: &Value) -> Result<Vec<String>, Refusal> {
    let bad = || refuse("stop", "'stop' must be a string or an array of strings");
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|s| s.as_str().map(str::to_owned).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

fn messages(value: &Value, out: &mut MessagesRequest) -> Result<(), Refusal> {
    let list = value.as_array().ok_or_else(|| refuse("messages", "'messages' must be an array"))?;
    for (i, message) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role =
            message.get("role").and_then(Value::as_str).ok_or_else(|| refuse(format!("{at}.role"), "missing role"))?;
        let content = message.get("content").filter(|c| !c.is_null());
        match role {
            "system" | "developer" => {
                for text in text_parts(content, &format!("{at}.content"))? {
                    out.system.push(text);
                }
            }
            "user" => {
                let blocks = user_content(content, &format!("{at}.content"))?;
                push_turn(&mut out.messages, "user", blocks);
            }
            "assistant" => {
                let mut blocks: Vec<Value> = text_parts(content, &format!("{at}.content"))?
                    .into_iter()
                    .filter(|block| block.get("text").and_then(Value::as_str).is_some_and(|t| !t.is_empty()))
                    .collect();
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    blocks.extend(tool_uses(calls, &format!("{at}.tool_calls"))?);
                }
                push_turn(&mut out.messages, "assistant", blocks);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refuse(format!("{at}.tool_call_id"), "a tool message needs 'tool_call_id'"))?;
                // Anthropic refuses empty text blocks; an empty result is just no content.
                let texts: Vec<Value> = text_parts(content, &format!("{at}.content"))?
                    .into_iter()
                    .filter(|block| block.get("text").and_then(Value::as_str).is_some_and(|t| !t.is_empty()))
                    .collect();
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": texts});
                push_turn(&mut out.messages, "user", vec![block]);
            }
            other => {
                return Err(refuse(
                    format!("{at}.role"),
                    format!("role '{other}' is not supported by Anthropic backends"),
                ));
            }
        }
    }
    Ok(())
}

/// Appends `blocks` as a turn of `role`, merged into the previous turn when it has the same
/// role (Anthropic wants user and assistant turns to alternate).
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn { role, content: blocks }),
    }
}

/// Content that may only hold text: a string, or an array of `{type: text}` parts.
fn text_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, Refusal> {
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| match part.get("type").and_then(Value::as_str) {
                Some("text") | Some("refusal") => text_block(part, &format!("{at}[{j}]")),
                _ => Err(refuse(format!("{at}[{j}].type"), "only text parts are allowed here")),
            })
            .collect(),
        Some(_) => Err(refuse(at, "'content' must be a string or an array of parts")),
    }
}

/// `{type: text, text}` (or a refusal part), keeping a `cache_control` marker if the client
/// set one for Anthropic's prompt caching.
fn text_block(part: &Value, at: &str) -> Result<Value, Refusal> {
    let text = part
        .get("text")
        .or_else(|| part.get("refusal"))
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("{at}.text"), "a text part needs 'text'"))?;
    let mut block = json!({"type": "text", "text": text});
    if let (Some(cache), Some(map)) = (part.get("cache_control"), block.as_object_mut()) {
        map.insert("cache_control".into(), cache.clone());
    }
    Ok(block)
}

fn user_content(content: Option<&Value>, at: &str) -> Result<Vec<Value>, Refusal> {
    let Some(Value::Array(parts)) = content else { return text_parts(content, at) };
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let here = format!("{at}[{j}]");
            match part.get("type").and_then(Value::as_str) {
                Some("text") => text_block(part, &here),
                Some("image_url") => image(part, &here),
                Some(other) => Err(refuse(
                    format!("{here}.type"),
                    format!("content parts of type '{other}' are not supported by Anthropic backends"),
                )),
                None => Err(refuse(format!("{here}.type"), "a content part needs 'type'")),
            }
        })
        .collect()
}

/// An `image_url` part: an http(s) URL becomes a URL source, a `data:` URL a base64 source.
fn image(part: &Value, at: &str) -> Result<Value, Refusal> {
    let url = part
        .get("image_url")
        .and_then(|i| i.get("url").or(Some(i)))
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("{at}.image_url.url"), "an image part needs 'image_url.url'"))?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) =
            rest.split_once(";base64,").filter(|(media, _)| !media.is_empty()).ok_or_else(|| {
                refuse(format!("{at}.image_url.url"), "a data URL must look like data:image/png;base64,...")
            })?;
        return Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(refuse(format!("{at}.image_url.url"), "an image URL must be http(s):// or a data: URL"))
}

/// Assistant `tool_calls` → `tool_use` blocks, arguments parsed from their JSON string.
fn tool_uses(calls: &Value, at: &str) -> Result<Vec<Value>, Refusal> {
    let calls = calls.as_array().ok_or_else(|| refuse(at, "'tool_calls' must be an array"))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let here = format!("{at}[{j}]");
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{here}.id"), "a tool call needs 'id'"))?;
            let function = call
                .get("function")
                .ok_or_else(|| refuse(format!("{here}.function"), "a tool call needs 'function'"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{here}.function.name"), "a tool call needs 'function.name'"))?;
            let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("");
            let input: Value = if arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(arguments).map_err(|err| {
                    refuse(
                        format!("{here}.function.arguments"),
                        format!("tool call arguments are not valid JSON: {err}"),
                    )
                })?
            };
            Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
        })
        .collect()
}

fn tools(value: &Value) -> Result<Vec<Value>, Refusal> {
    let list = value.as_array().ok_or_else(|| refuse("tools", "'tools' must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            if tool.get("type").and_then(Value::as_str).is_some_and(|t| t != "function") {
                return Err(refuse(format!("{at}.type"), "only tools of type 'function' are supported"));
            }
            let function =
                tool.get("function").ok_or_else(|| refuse(format!("{at}.function"), "a tool needs 'function'"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("{at}.function.name"), "a tool needs 'function.name'"))?;
            let schema =
                function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut out = json!({"name": name, "input_schema": schema});
            if let (Some(description), Some(map)) = (function.get("description"), out.as_object_mut()) {
                map.insert("description".into(), description.clone());
            }
            Ok(out)
        })
        .collect()
}

fn tool_choice(value: &Value) -> Result<Value, Refusal> {
    match value {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(refuse("tool_choice", format!("unknown tool_choice '{other}'"))),
        },
        Value::Object(choice) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("tool_choice.function.name", "tool_choice needs 'function.name'"))?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(refuse("tool_choice", "'tool_choice' must be a string or an object")),
    }
}
