//! Reads an OpenAI chat completions SSE stream as a sequence of typed deltas, the input of
//! every chat → other-API stream translator.
//!
//! Owns: parsing `chat.completion.chunk` events (choice 0 only: the translated requests
//! never ask for more), telling a tool call's first fragment from its argument fragments,
//! the usage chunk, `data: [DONE]`, and an upstream `{"error": ...}` event.
//! Must not: write anything for the client.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::sse::{Event, SseReader};
use super::usage::Tokens;
use super::{StreamError, StreamTranslate};

/// One thing a chat stream said, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent<'a> {
    /// The first chunk: the completion's id and the model that answers.
    Start {
        id: &'a str,
        model: &'a str,
    },
    Text(&'a str),
    Refusal(&'a str),
    /// `reasoning_content` (vLLM, DeepSeek) or `reasoning` (Ollama, OpenRouter).
    Reasoning(&'a str),
    /// A tool call's first fragment; `index` is the call's index in the chat stream.
    ToolStart {
        index: u64,
        id: &'a str,
        name: &'a str,
    },
    ToolArguments {
        index: u64,
        fragment: &'a str,
    },
    Finish(&'a str),
    Usage(Tokens),
    /// `data: [DONE]`: the stream is complete.
    Done,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Default)]
pub struct ChatStreamReader {
    sse: SseReader,
    started: bool,
    done: bool,
    /// Chat tool-call indices already started.
    tools: Vec<u64>,
}

impl ChatStreamReader {
    pub fn new() -> ChatStreamReader {
        ChatStreamReader::default()
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds upstream bytes, calling `on` for each delta they complete.
    pub fn push<F>(&mut self, bytes: &[u8], on: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(ChatEvent<'_>) -> Result<(), StreamError>,
    {
        let Self { sse, started, done, tools } = self;
        sse.push(bytes, &mut |event| read_event(event, started, done, tools, on))
    }

    /// The upstream ended; an error unless `[DONE]` was seen.
    pub fn finish<F>(&mut self, on: &mut F) -> Result<(), StreamError>
    where
        F: FnMut(ChatEvent<'_>) -> Result<(), StreamError>,
    {
        let Self { sse, started, done, tools } = self;
        sse.finish(&mut |event| read_event(event, started, done, tools, on))?;
        if !self.done {
            return Err(StreamError::Malformed("the upstream stream ended before its end ([DONE])".into()));
        }
        Ok(())
    }
}

fn read_event<F>(
    event: Event<'_>,
    started: &mut bool,
    done: &mut bool,
    tools: &mut Vec<u64>,
    on: &mut F,
) -> Result<(), StreamError>
where
    F: FnMut(ChatEvent<'_>) -> Result<(), StreamError>,
{
    if *done {
        return Ok(());
    }
    if event.data.trim_ascii() == b"[DONE]" {
        *done = true;
        return on(ChatEvent::Done);
    }
    let chunk: Chunk<'_> = serde_json::from_slice(event.data)
        .map_err(|err| StreamError::Malformed(format!("a chunk is not chat.completion.chunk JSON: {err}")))?;
    if let Some(error) = chunk.error {
        return Err(upstream_error(&error));
    }
    if !*started {
        *started = true;
        on(ChatEvent::Start {
            id: chunk.id.as_deref().unwrap_or_default(),
            model: chunk.model.as_deref().unwrap_or_default(),
        })?;
    }
    for choice in chunk.choices.iter().filter(|c| c.index == 0) {
        let delta = choice.delta.as_ref();
        if let Some(delta) = delta {
            for text in [&delta.reasoning_content, &delta.reasoning].into_iter().flatten() {
                if !text.is_empty() {
                    on(ChatEvent::Reasoning(text))?;
                }
            }
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                on(ChatEvent::Text(text))?;
            }
            if let Some(text) = delta.refusal.as_deref().filter(|t| !t.is_empty()) {
                on(ChatEvent::Refusal(text))?;
            }
            for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
                let index = call.index.unwrap_or(position as u64);
                let function = call.function.as_ref();
                if !tools.contains(&index) {
                    tools.push(index);
                    let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                    on(ChatEvent::ToolStart { index, id: call.id.as_deref().unwrap_or_default(), name })?;
                }
                if let Some(fragment) = function.and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty()) {
                    on(ChatEvent::ToolArguments { index, fragment })?;
                }
            }
        }
        if let Some(reason) = choice.finish_reason.as_deref() {
            on(ChatEvent::Finish(reason))?;
        }
    }
    if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
        on(ChatEvent::Usage(Tokens::from_chat(usage)))?;
    }
    Ok(())
}

/// A translator fed by a chat stream: it says what each delta becomes and how a failure
/// looks; [`StreamTranslate`] (push, finish, fail, and nothing after an end) comes with it.
pub trait ChatSink: Send {
    fn driver(&mut self) -> &mut Driver;
    /// Translates one delta, appending the client's bytes.
    fn on(&mut self, event: ChatEvent<'_>, out: &mut Vec<u8>) -> Result<(), StreamError>;
    /// Appends the client's error event.
    fn error(&mut self, err: &StreamError, out: &mut Vec<u8>);
}

/// The reader and the end state every [`ChatSink`] shares.
#[derive(Debug, Default)]
pub struct Driver {
    reader: ChatStreamReader,
    failed: bool,
}

impl<T: ChatSink> StreamTranslate for T {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.drive(out, |reader, sink, out| reader.push(bytes, &mut |event| sink.on(event, out)))
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.drive(out, |reader, sink, out| reader.finish(&mut |event| sink.on(event, out)))
    }

    fn fail(&mut self, err: &StreamError, out: &mut Vec<u8>) {
        let driver = self.driver();
        if driver.failed || driver.reader.is_done() {
            return;
        }
        driver.failed = true;
        self.error(err, out);
    }
}

trait Drive: ChatSink + Sized {
    /// Runs `step` with the reader taken out of the sink (so both can be borrowed), unless
    /// the stream already ended; a failure writes the error event once.
    fn drive<F>(&mut self, out: &mut Vec<u8>, step: F) -> Result<(), StreamError>
    where
        F: FnOnce(&mut ChatStreamReader, &mut Self, &mut Vec<u8>) -> Result<(), StreamError>,
    {
        let driver = self.driver();
        if driver.failed {
            return Err(StreamError::Malformed("the stream already failed".into()));
        }
        if driver.reader.is_done() {
            return Ok(());
        }
        let mut reader = std::mem::take(&mut driver.reader);
        let result = step(&mut reader, self, out);
        self.driver().reader = reader;
        result.inspect_err(|err| self.fail(err, out))
    }
}

impl<T: ChatSink> Drive for T {}

/// `{"error": {"message", "code"|"type"}}` as sent mid-stream by OpenAI-compatible servers
/// (and by weir's own Anthropic translation).
pub fn upstream_error(error: &Value) -> StreamError {
    let text = |name: &str| error.get(name).and_then(Value::as_str).map(str::to_owned);
    let message = text("message").or_else(|| error.as_str().map(str::to_owned)).unwrap_or_else(|| error.to_string());
    StreamError::Upstream { code: text("code").or_else(|| text("type")), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(stream: &str) -> (Vec<String>, Result<(), StreamError>) {
        let mut reader = ChatStreamReader::new();
        let mut seen = Vec::new();
        let mut on = |e: ChatEvent<'_>| {
            seen.push(format!("{e:?}"));
            Ok(())
        };
        let result = reader.push(stream.as_bytes(), &mut on).and_then(|()| reader.finish(&mut on));
        (seen, result)
    }

    #[test]
    fn tool_calls_start_once_and_carry_their_arguments() {
        let stream = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        );
        let (seen, result) = read(stream);
        assert!(result.is_ok());
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(seen[1].starts_with("ToolStart { index: 0, id: \"call_1\", name: \"f\""));
        assert!(seen[2].starts_with("ToolArguments"));
    }

    #[test]
    fn an_error_event_or_a_missing_done_is_an_error() {
        let (_, result) = read("data: {\"error\":{\"message\":\"boom\",\"code\":\"x\"}}\n\n");
        assert_eq!(result, Err(StreamError::Upstream { code: Some("x".into()), message: "boom".into() }));
        let (_, result) = read("data: {\"id\":\"c\",\"choices\":[]}\n\n");
        assert!(matches!(result, Err(StreamError::Malformed(_))));
    }
}
