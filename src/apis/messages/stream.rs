//! Chat completions SSE → Anthropic Messages SSE, incrementally.
//!
//! Owns: the event order Anthropic sends: `message_start` (with usage), `ping`, per block
//! `content_block_start`, its deltas (`text_delta`, `thinking_delta`, `input_json_delta`)
//! and `content_block_stop`, then `message_delta` (with `stop_reason` and the whole usage)
//! and `message_stop`; on a failure one `error` event and nothing after it. Keeps no text:
//! memory is one unfinished upstream event and a few counters.
//! Must not: invent a `message_stop` for a stream that did not end with `[DONE]`.

use serde_json::{Value, json};

use super::response::stop_reason;
use crate::apis::StreamError;
use crate::apis::chat_stream::{ChatEvent, ChatSink, Driver};
use crate::apis::sse::write_event;
use crate::apis::usage::Tokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// A tool call, by its chat index.
    Tool(u64),
}

#[derive(Debug)]
pub struct MessagesStream {
    driver: Driver,
    id: String,
    model: String,
    /// An estimate of the input tokens for `message_start` (chat reports usage at the end).
    input_estimate: u64,
    started: bool,
    /// The open block and its index; `next` is the index the next block gets.
    open: Option<(Block, usize)>,
    next: usize,
    finish: Option<String>,
    usage: Option<Tokens>,
}

impl MessagesStream {
    /// `id` is the message id (`msg_...`); `model` is named until the upstream names its own.
    pub fn new(id: String, model: String, input_estimate: u64) -> MessagesStream {
        MessagesStream {
            driver: Driver::default(),
            id,
            model,
            input_estimate,
            started: false,
            open: None,
            next: 0,
            finish: None,
            usage: None,
        }
    }

    fn event(&mut self, event: ChatEvent<'_>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let ChatEvent::Start { model, .. } = &event {
            if !model.is_empty() {
                (*model).clone_into(&mut self.model);
            }
        }
        self.start(out);
        match event {
            ChatEvent::Start { .. } => {}
            ChatEvent::Reasoning(text) => {
                self.ensure(Block::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), out);
                self.delta(json!({"type": "thinking_delta", "thinking": text}), out);
            }
            ChatEvent::Text(text) | ChatEvent::Refusal(text) => {
                self.ensure(Block::Text, json!({"type": "text", "text": ""}), out);
                self.delta(json!({"type": "text_delta", "text": text}), out);
            }
            ChatEvent::ToolStart { index, id, name } => {
                self.close(out);
                self.ensure(Block::Tool(index), json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
            }
            ChatEvent::ToolArguments { index, fragment } => {
                if self.open.map(|(block, _)| block) != Some(Block::Tool(index)) {
                    return Err(StreamError::Malformed(format!("arguments for tool call {index} after it ended")));
                }
                self.delta(json!({"type": "input_json_delta", "partial_json": fragment}), out);
            }
            ChatEvent::Finish(reason) => self.finish = Some(reason.to_owned()),
            ChatEvent::Usage(tokens) => self.usage = Some(tokens),
            ChatEvent::Done => {
                self.close(out);
                let usage = self.usage.unwrap_or(Tokens { input: self.input_estimate, ..Tokens::default() });
                let data = json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                    "usage": usage.to_anthropic(),
                });
                write_event(out, "message_delta", &data);
                write_event(out, "message_stop", &json!({"type": "message_stop"}));
            }
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = Tokens { input: self.input_estimate, output: 1, ..Tokens::default() };
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "content": [], "model": self.model,
            "stop_reason": null, "stop_sequence": null, "usage": usage.to_anthropic(),
        });
        write_event(out, "message_start", &json!({"type": "message_start", "message": message}));
        write_event(out, "ping", &json!({"type": "ping"}));
    }

    /// Opens `block` unless it is the open one (closing another first).
    fn ensure(&mut self, block: Block, content_block: Value, out: &mut Vec<u8>) {
        if self.open.map(|(open, _)| open) == Some(block) {
            return;
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((block, index));
        let data = json!({"type": "content_block_start", "index": index, "content_block": content_block});
        write_event(out, "content_block_start", &data);
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        let index = self.open.map_or(0, |(_, index)| index);
        write_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            write_event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }
}

/// One Anthropic `error` event.
pub fn write_error(out: &mut Vec<u8>, err: &StreamError) {
    let kind = match err {
        StreamError::Upstream { code: Some(code), .. } if code.ends_with("_error") => code.as_str(),
        _ => "api_error",
    };
    let data = json!({"type": "error", "error": {"type": kind, "message": err.message()}});
    write_event(out, "error", &data);
}

impl ChatSink for MessagesStream {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn on(&mut self, event: ChatEvent<'_>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.event(event, out)
    }

    fn error(&mut self, err: &StreamError, out: &mut Vec<u8>) {
        write_error(out, err);
    }
}
