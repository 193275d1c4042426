//! An Anthropic Messages request → a chat completions request, for backends that are not
//! `kind: anthropic` (those get the Messages request as it came).
//!
//! Owns: `system` (string or text blocks) as the first system message; user turns with
//! text and image blocks (base64 or URL), `tool_result` blocks as `tool` messages before
//! the rest of their turn; assistant turns with text and `tool_use` blocks as content and
//! `tool_calls` (earlier `thinking` blocks dropped: chat takes none back); `tools`,
//! `tool_choice` (`disable_parallel_tool_use` → `parallel_tool_calls: false`),
//! `max_tokens`, `stop_sequences`, sampling and `metadata.user_id`. `thinking` and
//! `cache_control` are Anthropic's own and have no chat form: they are accepted and left
//! out. Fields Anthropic does not define are refused, as Anthropic refuses them.
//! Must not: rename the model (the request path does for every endpoint).

use serde_json::{Map, Value, json};

use crate::apis::{Invalid, invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub chat: Map<String, Value>,
    pub stream: bool,
}

/// Parses the body as a JSON object.
pub fn parse(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("", "the request body must be a JSON object")),
        Err(err) => Err(invalid("", format!("the request body is not valid JSON: {err}"))),
    }
}

/// Checks the fields every Messages request needs, whichever backend gets it.
pub fn check(request: &Map<String, Value>) -> Result<(), Invalid> {
    if !request.get("model").is_some_and(Value::is_string) {
        return Err(invalid("model", "model: Field required (a string)"));
    }
    if request.get("max_tokens").and_then(Value::as_u64).is_none_or(|n| n == 0) {
        return Err(invalid("max_tokens", "max_tokens: Field required (a positive integer)"));
    }
    if request.get("messages").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        return Err(invalid("messages", "messages: Field required (a non-empty array)"));
    }
    Ok(())
}

pub fn translate(request: Map<String, Value>) -> Result<Translated, Invalid> {
    check(&request)?;
    let mut chat = Map::new();
    let mut system = Vec::new();
    let mut messages = Vec::new();
    let mut stream = false;
    for (field, value) in request {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "model" => {
                chat.insert(field, value);
            }
            "max_tokens" => {
                chat.insert(field, value);
            }
            "system" => system.push(json!({"role": "system", "content": system_text(&value)?})),
            "messages" => {
                for (i, message) in value.as_array().map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
                    turn(message, &format!("messages.{i}"), &mut messages)?;
                }
            }
            "stream" => stream = value.as_bool().ok_or_else(|| invalid("stream", "stream: must be a boolean"))?,
            "temperature" | "top_p" | "top_k" => {
                if !value.is_number() {
                    return Err(invalid(&field, format!("{field}: must be a number")));
                }
                chat.insert(field, value);
            }
            "stop_sequences" => {
                if !value.as_array().is_some_and(|s| s.iter().all(Value::is_string)) {
                    return Err(invalid(&field, "stop_sequences: must be an array of strings"));
                }
                chat.insert("stop".into(), value);
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").and_then(Value::as_str) {
                    chat.insert("user".into(), json!(user));
                }
            }
            "tools" => {
                chat.insert("tools".into(), tools(&value)?);
            }
            "tool_choice" => tool_choice(&value, &mut chat)?,
            // Anthropic's own: extended thinking and service tiers have no chat form.
            "thinking" | "service_tier" => {}
            "container" | "mcp_servers" | "context_management" => {
                return Err(invalid(&field, format!("{field}: only Anthropic backends support this field")));
            }
            _ => return Err(invalid(&field, format!("{field}: Extra inputs are not permitted"))),
        }
    }
    system.append(&mut messages);
    chat.insert("messages".into(), Value::Array(system));
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Translated { chat, stream })
}

fn system_text(value: &Value) -> Result<String, Invalid> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let texts = blocks
                .iter()
                .enumerate()
                .map(|(i, block)| match block.get("type").and_then(Value::as_str) {
                    Some("text") => block
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("system.{i}.text"), "text: Field required")),
                    _ => Err(invalid(format!("system.{i}.type"), "system blocks must be of type text")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(texts.join("\n"))
        }
        _ => Err(invalid("system", "system: must be a string or an array of text blocks")),
    }
}

/// One Messages turn → chat messages appended to `out`.
fn turn(message: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), Invalid> {
    let role = message.get("role").and_then(Value::as_str);
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            return match role {
                Some("user" | "assistant") => {
                    out.push(json!({"role": role, "content": text}));
                    Ok(())
                }
                _ => Err(invalid(format!("{at}.role"), "role: must be 'user' or 'assistant'")),
            };
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(invalid(format!("{at}.content"), "content: must be a string or an array of blocks")),
    };
    match role {
        Some("user") => user_turn(blocks, &format!("{at}.content"), out),
        Some("assistant") => assistant_turn(blocks, &format!("{at}.content"), out),
        _ => Err(invalid(format!("{at}.role"), "role: must be 'user' or 'assistant'")),
    }
}

fn user_turn(blocks: &[Value], at: &str, out: &mut Vec<Value>) -> Result<(), Invalid> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let here = format!("{at}.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": text_of(block, &here)?})),
            Some("image") => parts.push(image(block, &here)?),
            Some("tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("{here}.tool_use_id"), "tool_use_id: Field required"))?;
                let content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .enumerate()
                        .map(|(k, b)| match b.get("type").and_then(Value::as_str) {
                            Some("text") => text_of(b, &format!("{here}.content.{k}")),
                            _ => Err(invalid(
                                format!("{here}.content.{k}.type"),
                                "only text blocks can be sent in a tool_result to this backend",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join("\n"),
                    Some(_) => return Err(invalid(format!("{here}.content"), "content: must be a string or blocks")),
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Some(other) => {
                return Err(invalid(
                    format!("{here}.type"),
                    format!("blocks of type '{other}' can only be sent to Anthropic backends"),
                ));
            }
            None => return Err(invalid(format!("{here}.type"), "type: Field required")),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    // Text alone goes as a string: the most widely understood chat form.
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::String(texts.concat())
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn assistant_turn(blocks: &[Value], at: &str, out: &mut Vec<Value>) -> Result<(), Invalid> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let here = format!("{at}.{j}");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(text_of(block, &here)?),
            Some("tool_use") => {
                let field = |name: &str| {
                    block
                        .get(name)
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("{here}.{name}"), format!("{name}: Field required")))
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field("id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": input.to_string()},
                }));
            }
            // Earlier reasoning: chat backends take none back.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return Err(invalid(
                    format!("{here}.type"),
                    format!("blocks of type '{other}' can only be sent to Anthropic backends"),
                ));
            }
            None => return Err(invalid(format!("{here}.type"), "type: Field required")),
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    out.push(message);
    Ok(())
}

fn text_of<'a>(block: &'a Value, at: &str) -> Result<&'a str, Invalid> {
    block.get("text").and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}.text"), "text: Field required"))
}

fn image(block: &Value, at: &str) -> Result<Value, Invalid> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let field = |name: &str| {
        source
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}.source.{name}"), format!("{name}: Field required")))
    };
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!("data:{};base64,{}", field("media_type")?, field("data")?),
        Some("url") => field("url")?.to_owned(),
        _ => return Err(invalid(format!("{at}.source.type"), "image sources must be base64 or url")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tools(value: &Value) -> Result<Value, Invalid> {
    let list = value.as_array().ok_or_else(|| invalid("tools", "tools: must be an array"))?;
    let tools = list
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools.{i}");
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(invalid(
                        format!("{at}.type"),
                        format!("server tools ('{other}') can only be used with Anthropic backends"),
                    ));
                }
            }
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}.name"), "name: Field required"))?;
            let schema = tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}));
            let mut function = json!({"name": name, "parameters": schema});
            if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
                function["description"] = description.clone();
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(tools))
}

fn tool_choice(value: &Value, chat: &mut Map<String, Value>) -> Result<(), Invalid> {
    let choice = match value.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = value
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name", "name: Field required"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(invalid("tool_choice.type", "tool_choice.type: must be auto, any, tool or none")),
    };
    chat.insert("tool_choice".into(), choice);
    if value.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        chat.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(request: Value) -> Result<Translated, Invalid> {
        let Value::Object(map) = request else { panic!("not an object") };
        translate(map)
    }

    #[test]
    fn a_tool_use_round_trip_becomes_tool_calls_and_a_tool_message() {
        let t = translated(json!({
            "model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "checking"}, {"type": "tool_use", "id": "tu1", "name": "get", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": [{"type": "text", "text": "sunny"}]}, {"type": "text", "text": "thanks"}]},
            ],
            "tools": [{"name": "get", "description": "weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "metadata": {"user_id": "u1"}, "stop_sequences": ["END"], "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": true,
        }))
        .unwrap();
        let chat = Value::Object(t.chat);
        assert_eq!(chat["messages"][0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(chat["messages"][2]["content"], "checking");
        assert_eq!(chat["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(chat["messages"][3], json!({"role": "tool", "tool_call_id": "tu1", "content": "sunny"}));
        assert_eq!(chat["messages"][4], json!({"role": "user", "content": "thanks"}));
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
        assert!(t.stream);
    }

    #[test]
    fn images_become_data_urls() {
        let t = translated(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}, {"type": "text", "text": "what?"}]}]}))
        .unwrap();
        assert_eq!(t.chat["messages"][0]["content"][0]["image_url"]["url"], "data:image/png;base64,AAA");
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        assert_eq!(
            translated(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).unwrap_err().param,
            "max_tokens"
        );
        let bad_block =
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "document"}]}]});
        assert_eq!(translated(bad_block).unwrap_err().param, "messages.0.content.0.type");
        let extra = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "frob": 1});
        assert_eq!(translated(extra).unwrap_err().param, "frob");
    }
}
