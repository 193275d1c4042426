//! Anthropic's event stream → OpenAI `chat.completion.chunk` SSE, incrementally.
//!
//! Bytes are fed as they arrive, split anywhere; complete lines are parsed, events are
//! translated as soon as their blank line arrives, and only a partial line (bounded by
//! [`MAX_PENDING`]) is kept. Mapping: `message_start` → the first chunk (role), text deltas
//! → `content` deltas, a `tool_use` block's start → a tool call delta with its id and name,
//! `input_json_delta` → `function.arguments` deltas, `message_delta` → the finish-reason
//! chunk, `message_stop` → the usage chunk (when asked for) and `data: [DONE]`. `ping`,
//! thinking and unknown events are skipped. An `error` event, malformed data, or an end
//! before `message_stop` is an error: the caller ends the stream with an error event and no
//! `[DONE]`. Never panics, whatever the bytes.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::response::{AnthropicUsage, OpenAiUsage, finish_reason};
use crate::apis;
use crate::apis::sse::{Event, SseReader};

/// Largest partial event kept while waiting for its end.
pub const MAX_PENDING: usize = crate::apis::sse::MAX_EVENT;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The upstream sent an `error` event.
    #[error("{message} ({kind})")]
    Upstream { kind: String, message: String },
    #[error("malformed Anthropic stream: {0}")]
    Malformed(String),
}

#[derive(Debug)]
pub struct StreamTranslator {
    include_usage: bool,
    created: u64,
    /// Splits the upstream bytes into events.
    sse: SseReader,
    id: String,
    model: String,
    started: bool,
    stopped: bool,
    failed: bool,
    /// Anthropic content-block index → OpenAI tool-call index.
    tool_calls: HashMap<u64, usize>,
    usage: AnthropicUsage,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl StreamTranslator {
    /// `created` is the chunks' timestamp (Anthropic sends none).
    pub fn new(include_usage: bool, created: u64) -> StreamTranslator {
        StreamTranslator {
            include_usage,
            created,
            sse: SseReader::new(),
            id: String::new(),
            model: String::new(),
            started: false,
            stopped: false,
            failed: false,
            tool_calls: HashMap::new(),
            usage: AnthropicUsage::default(),
        }
    }

    /// Feeds the next bytes, appending the OpenAI SSE bytes they complete (often none) to
    /// `out`. On an error, `out` holds what was translated before it.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.check_failed()?;
        if self.stopped {
            return Ok(());
        }
        self.read(out, |sse, on| sse.push(bytes, on))
    }

    /// The upstream body ended: appends what is left, or fails if the stream did not finish.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.check_failed()?;
        if !self.stopped {
            // A last event without its closing blank line still counts.
            self.read(out, |sse, on| sse.finish(on))?;
        }
        if !self.stopped {
            return Err(self.failure(StreamError::Malformed("the stream ended before message_stop".into())));
        }
        Ok(())
    }

    /// Runs the SSE reader (`apis::sse`, shared with the inbound APIs) over new bytes, each
    /// whole event translated as it completes; events after `message_stop` are ignored.
    fn read<F>(&mut self, out: &mut Vec<u8>, step: F) -> Result<(), StreamError>
    where
        F: FnOnce(
            &mut SseReader,
            &mut dyn FnMut(Event<'_>) -> Result<(), apis::StreamError>,
        ) -> Result<(), apis::StreamError>,
    {
        let mut sse = std::mem::take(&mut self.sse);
        let mut failed = None;
        let result = step(&mut sse, &mut |event: Event<'_>| {
            // An event with no data carries nothing (and after message_stop, nothing counts).
            if self.stopped || event.data.is_empty() {
                return Ok(());
            }
            self.event(event.data, out).map_err(|err| {
                failed = Some(err);
                apis::StreamError::Malformed(String::new())
            })
        });
        self.sse = sse;
        match (result, failed) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(err)) => Err(self.failure(err)),
            (Err(err), None) => Err(self.failure(StreamError::Malformed(err.message()))),
        }
    }

    fn check_failed(&self) -> Result<(), StreamError> {
        match self.failed {
            true => Err(StreamError::Malformed("the stream already failed".into())),
            false => Ok(()),
        }
    }

    fn failure(&mut self, err: StreamError) -> StreamError {
        self.failed = true;
        err
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let event: Value = serde_json::from_slice(data)
            .map_err(|err| StreamError::Malformed(format!("event data is not JSON: {err}")))?;
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "message_start" && kind != "error" && kind != "ping" && !self.started && !kind.is_empty() {
            return Err(StreamError::Malformed(format!("`{kind}` before message_start")));
        }
        match kind {
            "message_start" => self.message_start(&event, out),
            "content_block_start" => self.block_start(&event, out),
            "content_block_delta" => self.block_delta(&event, out),
            "message_delta" => self.message_delta(&event, out),
            "message_stop" => self.message_stop(out),
            "error" => {
                let error = event.get("error");
                let field =
                    |name| error.and_then(|e| e.get(name)).and_then(Value::as_str).unwrap_or_default().to_owned();
                Err(StreamError::Upstream { kind: field("type"), message: field("message") })
            }
            "" => Err(StreamError::Malformed("an event without a type".into())),
            // ping, content_block_stop, and event types added later.
            _ => Ok(()),
        }
    }

    fn message_start(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let message =
            event.get("message").ok_or_else(|| StreamError::Malformed("message_start without message".into()))?;
        self.id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        self.model = message.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Some(usage) = message.get("usage") {
            self.usage.update(usage);
        }
        self.started = true;
        let delta = Delta { role: Some("assistant"), content: Some(""), ..Delta::default() };
        self.emit(delta, None, None, out)
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let index = block_index(event)?;
        let block = event.get("content_block").unwrap_or(&Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let tool = self.tool_calls.len();
                self.tool_calls.insert(index, tool);
                let id = block.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = block.get("name").and_then(Value::as_str).unwrap_or_default();
                let call = ToolCallDelta {
                    index: tool,
                    id: Some(id),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(name), arguments: "" },
                };
                let delta = Delta { tool_calls: Some([call]), ..Delta::default() };
                self.emit(delta, None, None, out)
            }
            Some("text") => match block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                Some(text) => self.emit(Delta { content: Some(text), ..Delta::default() }, None, None, out),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn block_delta(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let index = block_index(event)?;
        let delta = event.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta.get("text").and_then(Value::as_str).unwrap_or_default();
                if text.is_empty() {
                    return Ok(());
                }
                self.emit(Delta { content: Some(text), ..Delta::default() }, None, None, out)
            }
            Some("input_json_delta") => {
                let partial = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                let Some(&tool) = self.tool_calls.get(&index) else {
                    return Err(StreamError::Malformed(format!("input_json_delta for block {index}, not a tool_use")));
                };
                if partial.is_empty() {
                    return Ok(());
                }
                let call = ToolCallDelta {
                    index: tool,
                    id: None,
                    kind: None,
                    function: FunctionDelta { name: None, arguments: partial },
                };
                self.emit(Delta { tool_calls: Some([call]), ..Delta::default() }, None, None, out)
            }
            // thinking, signature and citations deltas have no OpenAI counterpart.
            _ => Ok(()),
        }
    }

    fn message_delta(&mut self, event: &Value, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let Some(usage) = event.get("usage") {
            self.usage.update(usage);
        }
        let reason = event.get("delta").and_then(|d| d.get("stop_reason")).and_then(Value::as_str);
        match reason {
            Some(reason) => self.emit(Delta::default(), Some(finish_reason(reason)), None, out),
            None => Ok(()),
        }
    }

    fn message_stop(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.include_usage {
            self.emit_usage(out)?;
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.stopped = true;
        Ok(())
    }

    fn emit(
        &self,
        delta: Delta<'_>,
        finish: Option<&'static str>,
        usage: Option<OpenAiUsage>,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let choice = Choice { index: 0, delta, logprobs: None, finish_reason: finish };
        self.write(vec![choice], usage, out)
    }

    fn emit_usage(&self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.write(Vec::new(), Some(self.usage.to_openai()), out)
    }

    fn write(
        &self,
        choices: Vec<Choice<'_>>,
        usage: Option<OpenAiUsage>,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        out.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut *out, &chunk).map_err(|err| StreamError::Malformed(err.to_string()))?;
        out.extend_from_slice(b"\n\n");
        Ok(())
    }
}

fn block_index(event: &Value) -> Result<u64, StreamError> {
    event
        .get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| StreamError::Malformed("a content block event without index".into()))
}
