//! Response objects of the Responses API: the envelope, its output items, and a whole chat
//! completion read as one.
//!
//! Owns: [`Shell`] (what every response object of one request repeats: id, time, model and
//! the echoed request fields), the status and `incomplete_details` a chat finish reason
//! means, and the `message` and `function_call` item shapes.
//! Must not: emit stream events (that is `events`).

use serde_json::{Map, Value, json};

use crate::apis::usage::Tokens;

/// What every response object of one request shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Shell {
    /// `resp_...`, made by the caller (unique, unguessable: it is the key of stored state).
    pub id: String,
    pub created_at: u64,
    /// The model named until the upstream names its own.
    pub model: String,
    /// The request fields the object repeats (see `request::Translated::echo`).
    pub echo: Map<String, Value>,
}

impl Shell {
    /// The id of the `n`th output item of this response: `msg_…`, `fc_…`.
    pub fn item_id(&self, prefix: &str, n: usize) -> String {
        let tail = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        format!("{prefix}_{tail}_{n}")
    }

    /// The response object with this status, output and usage.
    pub fn object(
        &self,
        status: Status,
        output: Vec<Value>,
        usage: Option<Tokens>,
        completed_at: Option<u64>,
    ) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        object.insert("status".into(), json!(status.as_str()));
        if let Some(at) = completed_at.filter(|_| status == Status::Completed) {
            object.insert("completed_at".into(), json!(at));
        }
        object.insert("error".into(), Value::Null);
        let incomplete = status.incomplete_reason().map(|reason| json!({"reason": reason}));
        object.insert("incomplete_details".into(), incomplete.unwrap_or(Value::Null));
        object.insert("model".into(), json!(self.model));
        object.insert("output".into(), Value::Array(output));
        for (field, value) in &self.echo {
            object.insert(field.clone(), value.clone());
        }
        object.insert("usage".into(), usage.map_or(Value::Null, Tokens::to_responses));
        Value::Object(object)
    }
}

/// A response's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut at `max_output_tokens`.
    IncompleteLength,
    /// Stopped by a content filter.
    IncompleteFilter,
}

impl Status {
    /// What a chat `finish_reason` means for the response.
    pub fn of_finish(reason: Option<&str>) -> Status {
        match reason {
            Some("length") => Status::IncompleteLength,
            Some("content_filter") => Status::IncompleteFilter,
            _ => Status::Completed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::IncompleteLength | Status::IncompleteFilter => "incomplete",
        }
    }

    fn incomplete_reason(self) -> Option<&'static str> {
        match self {
            Status::IncompleteLength => Some("max_output_tokens"),
            Status::IncompleteFilter => Some("content_filter"),
            Status::InProgress | Status::Completed => None,
        }
    }

    /// The status of an item that ends with the response.
    pub fn item_status(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::IncompleteLength | Status::IncompleteFilter => "incomplete",
        }
    }
}

/// One content part of an output message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Text,
    Refusal,
}

pub fn part(kind: PartKind, text: &str) -> Value {
    match kind {
        PartKind::Text => json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []}),
        PartKind::Refusal => json!({"type": "refusal", "refusal": text}),
    }
}

pub fn message_item(id: &str, status: &str, parts: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": parts})
}

pub fn function_call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

/// A whole chat completion (JSON) as a response object.
pub fn from_completion(body: &[u8], shell: &Shell, now: u64) -> Result<Value, String> {
    let chat: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let choice = chat
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| "the answer is not a chat.completion (no choices)".to_owned())?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let status = Status::of_finish(choice.get("finish_reason").and_then(Value::as_str));
    let mut output = Vec::new();
    let mut parts = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        parts.push(part(PartKind::Text, text));
    }
    if let Some(text) = message.get("refusal").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        parts.push(part(PartKind::Refusal, text));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if !parts.is_empty() || calls.is_empty() {
        if parts.is_empty() {
            parts.push(part(PartKind::Text, ""));
        }
        output.push(message_item(&shell.item_id("msg", output.len()), status.item_status(), parts));
    }
    for call in calls {
        let function = call.get("function").unwrap_or(&Value::Null);
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        output.push(function_call_item(
            &shell.item_id("fc", output.len()),
            "completed",
            &text(call.get("id")),
            &text(function.get("name")),
            &text(function.get("arguments")),
        ));
    }
    let usage = chat.get("usage").filter(|u| u.is_object()).map(Tokens::from_chat);
    let mut shell = shell.clone();
    if let Some(model) = chat.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()) {
        model.clone_into(&mut shell.model);
    }
    Ok(shell.object(status, output, usage, Some(now)))
}
