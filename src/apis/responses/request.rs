//! A Responses API request → a chat completions request.
//!
//! Owns: reading `input` (a string, or items: messages with text and image parts,
//! `function_call` and `function_call_output`, earlier `reasoning` items skipped),
//! `instructions` (a system message first), function `tools`, `tool_choice`,
//! `max_output_tokens`, sampling, `text.format`, `user`, `parallel_tool_calls`; the prior
//! items of a `previous_response_id` go before the new input. What the response object
//! echoes back is kept in [`Translated::echo`]. A parameter weir cannot honour is refused
//! with its name, never dropped silently.
//! Must not: look the previous response up (the caller hands its items in).

use serde_json::{Map, Value, json};

use crate::apis::{Invalid, invalid};

/// A Responses request, read and translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The chat completions request body (the public model name kept; the request path
    /// renames it for the target like any chat request).
    pub chat: Map<String, Value>,
    pub stream: bool,
    /// `store` (default true): keep the response for `GET` and `previous_response_id`.
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// This request's input as items (a string input becomes one user message item), to
    /// store with the response so a later request can continue from it.
    pub input_items: Vec<Value>,
    /// The request fields a response object repeats, with OpenAI's defaults.
    pub echo: Map<String, Value>,
}

/// Parses the body as a JSON object (the fields are checked by [`translate`]).
pub fn parse(body: &[u8]) -> Result<Map<String, Value>, Invalid> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("", "the request body must be a JSON object")),
        Err(err) => Err(invalid("", format!("we could not parse the JSON body of your request: {err}"))),
    }
}

/// `previous_response_id`, when the request continues a stored response.
pub fn previous_response_id(request: &Map<String, Value>) -> Result<Option<&str>, Invalid> {
    match request.get("previous_response_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => Ok(Some(id)),
        Some(_) => Err(invalid("previous_response_id", "'previous_response_id' must be a string")),
    }
}

/// Translates a parsed request; `prior` are the items of the previous response's
/// conversation (its input and output items), oldest first.
pub fn translate(request: Map<String, Value>, prior: &[Value]) -> Result<Translated, Invalid> {
    let mut chat = Map::new();
    let mut echo = default_echo();
    let mut stream = false;
    let mut store = true;
    let mut previous_response_id = None;
    let mut input = None;
    let mut instructions = None;
    for (field, value) in request {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "model" => {
                if !value.is_string() {
                    return Err(invalid("model", "'model' must be a string"));
                }
                chat.insert(field, value);
            }
            "input" => input = Some(value),
            "instructions" => {
                let text = value.as_str().ok_or_else(|| invalid("instructions", "'instructions' must be a string"))?;
                instructions = Some(text.to_owned());
                echo.insert(field, value);
            }
            "stream" => stream = boolean(&field, &value)?,
            "store" => store = boolean(&field, &value)?,
            "previous_response_id" => {
                let id = value.as_str().ok_or_else(|| invalid(&field, "'previous_response_id' must be a string"))?;
                previous_response_id = Some(id.to_owned());
                echo.insert(field, value);
            }
            "max_output_tokens" => {
                let limit = value
                    .as_u64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(&field, "'max_output_tokens' must be a positive integer"))?;
                chat.insert("max_tokens".into(), json!(limit));
                echo.insert(field, value);
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return Err(invalid(&field, format!("'{field}' must be a number")));
                }
                chat.insert(field.clone(), value.clone());
                echo.insert(field, value);
            }
            "tools" => {
                chat.insert(field.clone(), tools(&value)?);
                echo.insert(field, value);
            }
            "tool_choice" => {
                chat.insert(field.clone(), tool_choice(&value)?);
                echo.insert(field, value);
            }
            "parallel_tool_calls" => {
                boolean(&field, &value)?;
                chat.insert(field.clone(), value.clone());
                echo.insert(field, value);
            }
            "text" => {
                if let Some(format) = text_format(&value)? {
                    chat.insert("response_format".into(), format);
                }
                echo.insert(field, value);
            }
            "user" | "safety_identifier" => {
                let user = value.as_str().ok_or_else(|| invalid(&field, format!("'{field}' must be a string")))?;
                chat.entry("user").or_insert_with(|| json!(user));
                echo.insert(field, value);
            }
            "metadata" => {
                if !value.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
                    return Err(invalid(&field, "'metadata' must be an object of strings"));
                }
                echo.insert(field, value);
            }
            // A reasoning hint: echoed, and not forwarded (a chat backend that cannot
            // reason would refuse the whole request over it).
            "reasoning" => {
                echo.insert(field, value);
            }
            "truncation" => match value.as_str() {
                Some("disabled" | "auto") => {
                    echo.insert(field, value);
                }
                _ => return Err(invalid(&field, "'truncation' must be 'auto' or 'disabled'")),
            },
            // Bookkeeping with no effect on a translated answer.
            "include" | "service_tier" | "prompt_cache_key" | "stream_options" | "prompt_cache_retention" => {}
            "background" if value == Value::Bool(false) => {}
            "top_logprobs" if value.as_u64() == Some(0) => {}
            // weir's own prompts: rendered into the chat request like the chat extension (a
            // backend that speaks the Responses API natively gets the request as sent).
            "prompt" => {
                if !value.get("id").is_some_and(Value::is_string) {
                    return Err(invalid("prompt.id", "'prompt' must be an object with a string 'id'"));
                }
                echo.insert(field.clone(), value.clone());
                chat.insert(field, value);
            }
            "background" | "top_logprobs" | "conversation" | "max_tool_calls" => {
                return Err(invalid(&field, format!("'{field}' is not supported by weir's Responses API")));
            }
            _ => return Err(invalid(&field, format!("Unknown parameter: '{field}'."))),
        }
    }
    if !chat.contains_key("model") {
        return Err(invalid("model", "Missing required parameter: 'model'."));
    }
    let input_items = match input {
        Some(Value::String(text)) => vec![json!({"type": "message", "role": "user", "content": text})],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("input", "'input' must be a string or an array of items")),
        // A prompt may carry the whole input.
        None if chat.contains_key("prompt") => Vec::new(),
        None => return Err(invalid("input", "Missing required parameter: 'input'.")),
    };
    let mut messages = Vec::new();
    if let Some(text) = instructions {
        messages.push(json!({"role": "system", "content": text}));
    }
    items_to_messages(prior, "previous_response", &mut messages)?;
    items_to_messages(&input_items, "input", &mut messages)?;
    if messages.is_empty() && !chat.contains_key("prompt") {
        return Err(invalid("input", "'input' must hold at least one item"));
    }
    if !messages.is_empty() {
        chat.insert("messages".into(), Value::Array(messages));
    }
    if stream {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    echo.insert("store".into(), Value::Bool(store));
    Ok(Translated { chat, stream, store, previous_response_id, input_items, echo })
}

/// The fields a response object always carries, as OpenAI fills them by default.
fn default_echo() -> Map<String, Value> {
    let echo = json!({
        "instructions": null,
        "max_output_tokens": null,
        "metadata": {},
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "user": null,
    });
    match echo {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn boolean(field: &str, value: &Value) -> Result<bool, Invalid> {
    value.as_bool().ok_or_else(|| invalid(field, format!("'{field}' must be a boolean")))
}

/// Input items → chat messages, appended to `messages`.
fn items_to_messages(items: &[Value], at: &str, messages: &mut Vec<Value>) -> Result<(), Invalid> {
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            // An item without a type but with a role is an "easy input message".
            Some("message") | None => messages.push(message(item, &here)?),
            Some("function_call") => {
                let call = json!({
                    "id": text_field(item, "call_id", &here)?,
                    "type": "function",
                    "function": {
                        "name": text_field(item, "name", &here)?,
                        "arguments": item.get("arguments").and_then(Value::as_str).unwrap_or("{}"),
                    },
                });
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls") {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => last["tool_calls"] = json!([call]),
                    },
                    _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => joined_text(parts, &format!("{here}.output"))?,
                    _ => return Err(invalid(format!("{here}.output"), "'output' must be a string or text parts")),
                };
                let id = text_field(item, "call_id", &here)?;
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
            }
            // Reasoning of an earlier turn: chat backends take none back.
            Some("reasoning") => {}
            Some(other) => {
                return Err(invalid(
                    format!("{here}.type"),
                    format!("input items of type '{other}' are not supported by weir's Responses API"),
                ));
            }
        }
    }
    Ok(())
}

fn text_field<'a>(item: &'a Value, name: &str, at: &str) -> Result<&'a str, Invalid> {
    item.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.{name}"), format!("'{name}' must be a string")))
}

fn message(item: &Value, at: &str) -> Result<Value, Invalid> {
    let role = text_field(item, "role", at)?;
    let role = match role {
        "user" | "assistant" | "system" => role,
        // Chat servers besides OpenAI rarely know `developer`; it means the same as system.
        "developer" => "system",
        other => return Err(invalid(format!("{at}.role"), format!("unknown role '{other}'"))),
    };
    let at = format!("{at}.content");
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) if role == "user" => Value::Array(user_parts(parts, &at)?),
        Some(Value::Array(parts)) => Value::String(joined_text(parts, &at)?),
        _ => return Err(invalid(at, "'content' must be a string or an array of parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

fn user_parts(parts: &[Value], at: &str) -> Result<Vec<Value>, Invalid> {
    parts
        .iter()
        .enumerate()
        .map(|(j, part)| {
            let here = format!("{at}[{j}]");
            match part.get("type").and_then(Value::as_str) {
                Some("input_text" | "output_text" | "text") => {
                    Ok(json!({"type": "text", "text": text_field(part, "text", &here)?}))
                }
                Some("input_image") => {
                    let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                        return Err(invalid(
                            format!("{here}.image_url"),
                            "an input_image needs 'image_url' (a URL or data: URL; file ids are not supported)",
                        ));
                    };
                    let detail = part.get("detail").and_then(Value::as_str).unwrap_or("auto");
                    Ok(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}))
                }
                Some(other) => Err(invalid(
                    format!("{here}.type"),
                    format!("content parts of type '{other}' are not supported by weir's Responses API"),
                )),
                None => Err(invalid(format!("{here}.type"), "a content part needs 'type'")),
            }
        })
        .collect()
}

/// Text parts (`input_text`, `output_text`, `refusal`) joined into one string.
fn joined_text(parts: &[Value], at: &str) -> Result<String, Invalid> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let piece = match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => part.get("text"),
            Some("refusal") => part.get("refusal"),
            _ => None,
        };
        let piece = piece
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}[{j}]"), "only text parts are allowed here"))?;
        text.push_str(piece);
    }
    Ok(text)
}

fn tools(value: &Value) -> Result<Value, Invalid> {
    let list = value.as_array().ok_or_else(|| invalid("tools", "'tools' must be an array"))?;
    let tools = list
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(other) => {
                    return Err(invalid(
                        format!("{at}.type"),
                        format!("tools of type '{other}' are not supported by weir's Responses API"),
                    ));
                }
                None => return Err(invalid(format!("{at}.type"), "a tool needs 'type'")),
            }
            let mut function = Map::new();
            function.insert("name".into(), json!(text_field(tool, "name", &at)?));
            for field in ["description", "parameters", "strict"] {
                if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
                    function.insert(field.into(), value.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(tools))
}

fn tool_choice(value: &Value) -> Result<Value, Invalid> {
    match value {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(value.clone()),
        Value::Object(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("tool_choice.name", "tool_choice needs 'name'"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid("tool_choice", "'tool_choice' must be auto, none, required or {type: function, name}")),
    }
}

/// `text.format` → chat's `response_format` (`None` for plain text).
fn text_format(text: &Value) -> Result<Option<Value>, Invalid> {
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            let name = format.get("name").and_then(Value::as_str).unwrap_or("response");
            schema.insert("name".into(), json!(name));
            for field in ["schema", "strict", "description"] {
                if let Some(value) = format.get(field).filter(|v| !v.is_null()) {
                    schema.insert(field.into(), value.clone());
                }
            }
            if !schema.contains_key("schema") {
                return Err(invalid("text.format.schema", "a json_schema format needs 'schema'"));
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid("text.format.type", "'text.format.type' must be text, json_object or json_schema")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(request: Value) -> Result<Translated, Invalid> {
        let Value::Object(map) = request else { panic!("not an object") };
        translate(map, &[])
    }

    #[test]
    fn a_string_input_with_instructions_becomes_system_and_user_messages() {
        let t = translated(
            json!({"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 50, "stream": true}),
        )
        .unwrap();
        assert_eq!(
            Value::Object(t.chat),
            json!({
                "model": "m",
                "max_tokens": 50,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
        assert!(t.stream && t.store);
        assert_eq!(t.echo["instructions"], "be brief");
    }

    #[test]
    fn function_calls_and_outputs_become_tool_calls_and_tool_messages() {
        let t = translated(json!({
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}, {"type": "input_image", "image_url": "https://x/y.png"}]},
                {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"a\":1}"},
                {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        }))
        .unwrap();
        let messages = &t.chat["messages"];
        assert_eq!(
            messages[0]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}})
        );
        assert_eq!(messages[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(messages[2], json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}));
        assert_eq!(t.chat["tools"][0]["function"]["name"], "get");
        assert_eq!(t.chat["tool_choice"], json!({"type": "function", "function": {"name": "get"}}));
        assert_eq!(t.chat["response_format"]["json_schema"]["name"], "w");
    }

    #[test]
    fn prior_items_come_before_the_new_input() {
        let prior = vec![
            json!({"type": "message", "role": "user", "content": "first"}),
            json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}),
        ];
        let Value::Object(map) = json!({"model": "m", "input": "second", "previous_response_id": "resp_1"}) else {
            unreachable!()
        };
        let t = translate(map, &prior).unwrap();
        let roles: Vec<_> = t.chat["messages"].as_array().unwrap().iter().map(|m| m["role"].clone()).collect();
        assert_eq!(roles, vec![json!("user"), json!("assistant"), json!("user")]);
        assert_eq!(t.chat["messages"][1]["content"], "ok");
        assert_eq!(t.previous_response_id.as_deref(), Some("resp_1"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_its_field() {
        let err = translated(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})).unwrap_err();
        assert_eq!(err.param, "tools[0].type");
        let err = translated(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})).unwrap_err();
        assert_eq!(err.param, "input[0].type");
        let err = translated(json!({"model": "m", "input": "x", "frobnicate": 1})).unwrap_err();
        assert_eq!(err.param, "frobnicate");
        assert_eq!(translated(json!({"input": "x"})).unwrap_err().param, "model");
        assert_eq!(translated(json!({"model": "m", "input": 3})).unwrap_err().param, "input");
    }
}
