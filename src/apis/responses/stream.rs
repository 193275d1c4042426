//! Chat completions SSE → the Responses API's typed events, incrementally.
//!
//! Owns: the event order OpenAI sends (`response.created`, `response.in_progress`, per item
//! `response.output_item.added`, its content parts and deltas and their `.done` events,
//! `response.output_item.done`, then `response.completed` or `response.incomplete`), each
//! with its `sequence_number`; and the failure path: one `error` event, nothing after it.
//! The closing events repeat the whole output, so the text so far is kept, bounded by
//! [`MAX_ANSWER`].
//! Must not: buffer upstream bytes beyond one unfinished SSE event.

use serde_json::{Value, json};

use super::response::{PartKind, Shell, Status, function_call_item, message_item, part};
use crate::apis::chat_stream::{ChatEvent, ChatSink, Driver};
use crate::apis::sse::write_event;
use crate::apis::usage::Tokens;
use crate::apis::{MAX_ANSWER, StreamError};

/// Writes events with increasing sequence numbers.
#[derive(Debug, Default)]
pub struct Emitter {
    sequence: u64,
}

impl Emitter {
    /// Appends one event: its `type` and `sequence_number` are added to `fields`.
    pub fn emit(&mut self, out: &mut Vec<u8>, kind: &str, fields: Value) {
        let mut data = json!({"type": kind, "sequence_number": self.sequence});
        if let (Some(data), Value::Object(fields)) = (data.as_object_mut(), fields) {
            data.extend(fields);
        }
        write_event(out, kind, &data);
        self.sequence = self.sequence.saturating_add(1);
    }

    pub fn error(&mut self, out: &mut Vec<u8>, err: &StreamError) {
        self.emit(out, "error", json!({"code": err.code(), "message": err.message(), "param": null}));
    }
}

/// An output item being streamed.
#[derive(Debug)]
enum Item {
    Message { id: String, parts: Vec<(PartKind, String)>, open: bool },
    Call { id: String, call_id: String, name: String, arguments: String, open: bool },
}

#[derive(Debug)]
pub struct ResponsesStream {
    driver: Driver,
    shell: Shell,
    now: u64,
    emitter: Emitter,
    started: bool,
    items: Vec<Item>,
    /// Chat tool-call index → output index.
    calls: Vec<(u64, usize)>,
    finish: Option<String>,
    usage: Option<Tokens>,
    kept: usize,
    /// The response object of the closing event, for the caller to store.
    last: Option<Value>,
}

impl ResponsesStream {
    /// `now` stamps `completed_at`.
    pub fn new(shell: Shell, now: u64) -> ResponsesStream {
        ResponsesStream {
            driver: Driver::default(),
            shell,
            now,
            emitter: Emitter::default(),
            started: false,
            items: Vec::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
            kept: 0,
            last: None,
        }
    }

    /// The final response object, once the stream has completed (taken once).
    pub fn take_final(&mut self) -> Option<Value> {
        self.last.take()
    }

    fn event(&mut self, event: ChatEvent<'_>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let ChatEvent::Start { model, .. } = &event {
            if !model.is_empty() {
                (*model).clone_into(&mut self.shell.model);
            }
        }
        self.start(out);
        match event {
            ChatEvent::Start { .. } => Ok(()),
            ChatEvent::Text(text) => self.text(PartKind::Text, text, out),
            ChatEvent::Refusal(text) => self.text(PartKind::Refusal, text, out),
            // Reasoning text has no place in a translated response; its tokens are in usage.
            ChatEvent::Reasoning(_) => Ok(()),
            ChatEvent::ToolStart { index, id, name } => {
                self.close_all(Status::Completed, out);
                let output_index = self.items.len();
                let item_id = self.shell.item_id("fc", output_index);
                let item = function_call_item(&item_id, "in_progress", id, name, "");
                self.emitter.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": item}),
                );
                self.items.push(Item::Call {
                    id: item_id,
                    call_id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: String::new(),
                    open: true,
                });
                self.calls.push((index, output_index));
                self.keep(id.len() + name.len())
            }
            ChatEvent::ToolArguments { index, fragment } => {
                let output_index = self.calls.iter().find(|(i, _)| *i == index).map(|(_, o)| *o);
                let Some(Item::Call { id, arguments, open: true, .. }) =
                    output_index.and_then(|o| self.items.get_mut(o))
                else {
                    return Err(StreamError::Malformed(format!("arguments for tool call {index} after it ended")));
                };
                arguments.push_str(fragment);
                let fields = json!({"item_id": id, "output_index": output_index, "delta": fragment});
                self.emitter.emit(out, "response.function_call_arguments.delta", fields);
                self.keep(fragment.len())
            }
            ChatEvent::Finish(reason) => {
                self.finish = Some(reason.to_owned());
                Ok(())
            }
            ChatEvent::Usage(tokens) => {
                self.usage = Some(tokens);
                Ok(())
            }
            ChatEvent::Done => {
                let status = Status::of_finish(self.finish.as_deref());
                self.close_all(status, out);
                let kind = match status {
                    Status::Completed | Status::InProgress => "response.completed",
                    Status::IncompleteLength | Status::IncompleteFilter => "response.incomplete",
                };
                let output = self.items.iter().map(|item| item_value(item, status)).collect();
                let response = self.shell.object(status, output, self.usage, Some(self.now));
                self.emitter.emit(out, kind, json!({"response": response.clone()}));
                self.last = Some(response);
                Ok(())
            }
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.shell.object(Status::InProgress, Vec::new(), None, None);
        self.emitter.emit(out, "response.created", json!({"response": response}));
        self.emitter.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn text(&mut self, kind: PartKind, text: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let open_message = matches!(self.items.last(), Some(Item::Message { open: true, .. }));
        if !open_message {
            self.close_all(Status::Completed, out);
            let output_index = self.items.len();
            let id = self.shell.item_id("msg", output_index);
            let item = message_item(&id, "in_progress", Vec::new());
            self.emitter.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
            self.items.push(Item::Message { id, parts: Vec::new(), open: true });
        }
        let output_index = self.items.len() - 1;
        let Some(Item::Message { id, parts, .. }) = self.items.last_mut() else {
            return Err(StreamError::Malformed("no message to add text to".into()));
        };
        if parts.last().is_none_or(|(k, _)| *k != kind) {
            parts.push((kind, String::new()));
            let fields = json!({"item_id": id, "output_index": output_index, "content_index": parts.len() - 1, "part": part(kind, "")});
            self.emitter.emit(out, "response.content_part.added", fields);
        }
        let content_index = parts.len() - 1;
        if let Some((_, kept)) = parts.last_mut() {
            kept.push_str(text);
        }
        let (kind_name, fields) = match kind {
            PartKind::Text => (
                "response.output_text.delta",
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "delta": text, "logprobs": []}),
            ),
            PartKind::Refusal => (
                "response.refusal.delta",
                json!({"item_id": id, "output_index": output_index, "content_index": content_index, "delta": text}),
            ),
        };
        self.emitter.emit(out, kind_name, fields);
        self.keep(text.len())
    }

    /// Ends every open item with its `.done` events.
    fn close_all(&mut self, status: Status, out: &mut Vec<u8>) {
        for (output_index, item) in self.items.iter_mut().enumerate() {
            match item {
                Item::Message { open, .. } | Item::Call { open, .. } if !*open => continue,
                Item::Message { open, .. } | Item::Call { open, .. } => *open = false,
            }
            close(&mut self.emitter, output_index, item, status, out);
        }
    }

    fn keep(&mut self, bytes: usize) -> Result<(), StreamError> {
        self.kept = self.kept.saturating_add(bytes);
        if self.kept > MAX_ANSWER {
            return Err(StreamError::TooLarge);
        }
        Ok(())
    }
}

/// The `.done` events of one item.
fn close(emitter: &mut Emitter, output_index: usize, item: &Item, status: Status, out: &mut Vec<u8>) {
    match item {
        Item::Message { id, parts, .. } => {
            for (content_index, (kind, text)) in parts.iter().enumerate() {
                let at = json!({"item_id": id, "output_index": output_index, "content_index": content_index});
                let (name, mut fields) = match kind {
                    PartKind::Text => ("response.output_text.done", json!({"text": text, "logprobs": []})),
                    PartKind::Refusal => ("response.refusal.done", json!({"refusal": text})),
                };
                merge(&mut fields, &at);
                emitter.emit(out, name, fields);
                let mut fields = json!({"part": part(*kind, text)});
                merge(&mut fields, &at);
                emitter.emit(out, "response.content_part.done", fields);
            }
        }
        Item::Call { id, name, arguments, .. } => {
            let fields = json!({"item_id": id, "output_index": output_index, "arguments": arguments, "name": name});
            emitter.emit(out, "response.function_call_arguments.done", fields);
        }
    }
    let fields = json!({"output_index": output_index, "item": item_value(item, status)});
    emitter.emit(out, "response.output_item.done", fields);
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

fn item_value(item: &Item, status: Status) -> Value {
    match item {
        Item::Message { id, parts, .. } => {
            let parts = parts.iter().map(|(kind, text)| part(*kind, text)).collect();
            message_item(id, status.item_status(), parts)
        }
        Item::Call { id, call_id, name, arguments, .. } => {
            function_call_item(id, "completed", call_id, name, arguments)
        }
    }
}

impl ChatSink for ResponsesStream {
    fn driver(&mut self) -> &mut Driver {
        &mut self.driver
    }

    fn on(&mut self, event: ChatEvent<'_>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.event(event, out)
    }

    fn error(&mut self, err: &StreamError, out: &mut Vec<u8>) {
        self.emitter.error(out, err);
    }
}
