//! Rendering an [`Answer`] in OpenAI's wire format: one JSON body, or SSE chunks.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::answer::{Answer, Choice};
use crate::wire::Endpoint;

impl Answer {
    /// The non-streaming response body.
    pub fn to_json(&self) -> String {
        let body = match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": self.choices.iter().enumerate().map(|(i, c)| chat_choice(i, c)).collect::<Vec<_>>(),
                "usage": self.usage(),
                "system_fingerprint": "weir-mock",
            }),
            Endpoint::Completions => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": self.choices.iter().enumerate().map(|(i, c)| json!({
                    "index": i, "text": c.text(), "logprobs": null, "finish_reason": c.finish_reason,
                })).collect::<Vec<_>>(),
                "usage": self.usage(),
            }),
            Endpoint::Embeddings => json!({
                "object": "list",
                "model": self.model,
                "data": self.embeddings.iter().enumerate().map(|(i, v)| json!({
                    "object": "embedding", "index": i, "embedding": self.embedding_value(v),
                })).collect::<Vec<_>>(),
                "usage": self.usage(),
            }),
        };
        body.to_string()
    }

    /// SSE events in order, `data: [DONE]` last; one content event per word and choice.
    pub fn to_sse_chunks(&self) -> Vec<Bytes> {
        let mut events = Vec::new();
        match self.endpoint {
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => self.chat_events(&mut events),
            Endpoint::Completions => self.completion_events(&mut events),
            Endpoint::Embeddings => {}
        }
        if self.include_usage {
            events.push(self.chunk(json!([]), Some(self.usage())));
        }
        let mut chunks: Vec<Bytes> = events.into_iter().map(|e| Bytes::from(format!("data: {e}\n\n"))).collect();
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        chunks
    }

    fn chat_events(&self, events: &mut Vec<Value>) {
        for (i, _) in self.choices.iter().enumerate() {
            events.push(self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None));
        }
        let longest = self.choices.iter().map(|c| c.words.len()).max().unwrap_or(0);
        for (i, choice) in self.choices.iter().enumerate() {
            if let Some(call) = &choice.tool_call {
                let start = json!([{"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]);
                events.push(self.chunk(
                    json!([{"index": i, "delta": {"tool_calls": start}, "logprobs": null, "finish_reason": null}]),
                    None,
                ));
                let args = json!([{"index": 0, "function": {"arguments": call.arguments}}]);
                events.push(self.chunk(
                    json!([{"index": i, "delta": {"tool_calls": args}, "logprobs": null, "finish_reason": null}]),
                    None,
                ));
            }
        }
        for position in 0..longest {
            for (i, choice) in self.choices.iter().enumerate() {
                if let Some(word) = choice.words.get(position) {
                    let piece = if position == 0 { (*word).to_owned() } else { format!(" {word}") };
                    events.push(self.chunk(
                        json!([{"index": i, "delta": {"content": piece}, "logprobs": null, "finish_reason": null}]),
                        None,
                    ));
                }
            }
        }
        for (i, choice) in self.choices.iter().enumerate() {
            events.push(self.chunk(
                json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": choice.finish_reason}]),
                None,
            ));
        }
    }

    fn completion_events(&self, events: &mut Vec<Value>) {
        let longest = self.choices.iter().map(|c| c.words.len()).max().unwrap_or(0);
        for position in 0..longest {
            for (i, choice) in self.choices.iter().enumerate() {
                if let Some(word) = choice.words.get(position) {
                    let piece = if position == 0 { (*word).to_owned() } else { format!(" {word}") };
                    events.push(
                        self.chunk(json!([{"index": i, "text": piece, "logprobs": null, "finish_reason": null}]), None),
                    );
                }
            }
        }
        for (i, choice) in self.choices.iter().enumerate() {
            events.push(self.chunk(
                json!([{"index": i, "text": "", "logprobs": null, "finish_reason": choice.finish_reason}]),
                None,
            ));
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let object = match self.endpoint {
            Endpoint::ChatCompletions => "chat.completion.chunk",
            _ => "text_completion",
        };
        let mut chunk =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        chunk
    }

    fn embedding_value(&self, vector: &[f32]) -> Value {
        if self.base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(vector)
        }
    }
}

fn chat_choice(index: usize, choice: &Choice) -> Value {
    let message = match &choice.tool_call {
        Some(call) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}],
        }),
        None => json!({"role": "assistant", "content": choice.text()}),
    };
    json!({"index": index, "message": message, "logprobs": null, "finish_reason": choice.finish_reason})
}
