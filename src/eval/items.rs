//! The items an evaluation replays: the successful chat and text completions of a dataset
//! directory, each with the reference answer scorers compare against.
//!
//! Owns: turning a record into a request to send again (the recorded body with `model`
//! replaced and streaming off) and choosing its reference. Must not: keep more than the
//! items themselves (one pass over the files, feedback joined from a first small pass).

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::datasets::read::{self, Entry, ReadError};

/// Which OpenAI endpoint an item goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
        }
    }
}

/// One request to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The recorded request's `request_id`.
    pub id: String,
    pub endpoint: Endpoint,
    /// The request body, `model` and streaming still as recorded.
    pub body: Map<String, Value>,
    /// The reviewer's `ideal` from feedback when given, else the answer recorded.
    pub reference: Option<String>,
}

impl Item {
    /// The body to send: the recorded one for `model`, not streamed.
    pub fn request(&self, model: &str) -> Value {
        let mut body = self.body.clone();
        body.insert("model".into(), Value::String(model.to_owned()));
        body.remove("stream");
        body.remove("stream_options");
        Value::Object(body)
    }

    /// The prompt as text, for a judge: the messages as `role: content` lines, or the prompt.
    pub fn input_text(&self) -> String {
        if let Some(messages) = self.body.get("messages").and_then(Value::as_array) {
            return messages
                .iter()
                .map(|m| format!("{}: {}", read::text(m, "role"), content_text(m.get("content"))))
                .collect::<Vec<_>>()
                .join("\n");
        }
        content_text(self.body.get("prompt"))
    }
}

/// The items of `dir`, oldest first, at most `limit`; warnings about damaged lines to `warn`.
pub fn load(dir: &Path, limit: Option<usize>, warn: &mut dyn Write) -> Result<Vec<Item>, ReadError> {
    let feedback = read::feedback(dir)?;
    let mut items = Vec::new();
    read::for_each(dir, warn, |entry| {
        let Entry::Request(record) = entry else { return Ok(()) };
        if limit.is_some_and(|limit| items.len() >= limit) {
            return Ok(());
        }
        if let Some(mut item) = item(&record) {
            if let Some(ideal) = feedback.get(&item.id).and_then(|f| f.ideal.clone()) {
                item.reference = Some(ideal);
            }
            items.push(item);
        }
        Ok(())
    })?;
    Ok(items)
}

fn item(record: &Value) -> Option<Item> {
    if !read::succeeded(record) {
        return None;
    }
    let endpoint = match read::text(record, "endpoint") {
        "chat" => Endpoint::Chat,
        "text_completion" => Endpoint::Completions,
        _ => return None,
    };
    let body = record.get("request")?.as_object()?.clone();
    let reference = match endpoint {
        Endpoint::Chat => record.pointer("/response/choices/0/message/content").and_then(Value::as_str),
        Endpoint::Completions => record.pointer("/response/choices/0/text").and_then(Value::as_str),
    };
    let id = read::text(record, "request_id");
    (!id.is_empty()).then(|| Item { id: id.to_owned(), endpoint, body, reference: reference.map(str::to_owned) })
}

/// Text of a message `content` (a string or an array of text parts) or of a prompt.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_becomes_an_unstreamed_request_with_its_answer_as_reference() {
        let record = json!({"request_id": "r1", "status": 200, "endpoint": "chat",
            "request": {"model": "old", "stream": true, "stream_options": {"include_usage": true},
                "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}});
        let item = item(&record).unwrap();
        assert_eq!(item.reference.as_deref(), Some("hello"));
        assert_eq!(
            item.request("new"),
            json!({"model": "new", "temperature": 0.2, "messages": [{"role": "user", "content": "hi"}]})
        );
        assert_eq!(item.input_text(), "user: hi");
        let failed = json!({"request_id": "r2", "status": 502, "endpoint": "chat", "request": {}});
        assert_eq!(super::item(&failed), None);
        let embedding = json!({"request_id": "r3", "status": 200, "endpoint": "embeddings", "request": {}});
        assert_eq!(super::item(&embedding), None);
    }
}
