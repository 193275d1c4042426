//! Folds a captured answer into one OpenAI JSON response.
//!
//! JSON answers are parsed as they are. SSE answers (`chat.completion.chunk` or streamed
//! `text_completion`) are replayed delta by delta: content and text concatenated, tool-call
//! fragments joined by `index`, the last `finish_reason` per choice kept, and the usage
//! chunk (`stream_options.include_usage`) read when present. [`SseAssembler`] does the same
//! as the chunks pass, so a long stream is held as its text rather than as its events.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::json::{List, Obj, Text, Uint};
use super::lines::Lines;
use super::summary::AnswerSummary;
use super::usage::{RawUsage, Usage};

/// A complete answer read back from the wire, always in the non-streamed JSON shape.
#[derive(Debug, Clone)]
pub struct Assembled {
    /// `chat.completion`, `text_completion` or the embeddings list, as a JSON value. A
    /// streamed answer is folded into the shape the same request would have got unstreamed.
    pub body: AnswerBody,
    pub usage: Option<Usage>,
    /// Whether a streamed answer ended with `data: [DONE]` (always true for JSON).
    pub complete: bool,
    /// The response model and finish reasons: known when folded from events, read from a
    /// JSON answer's bytes only when asked (a traced request's span), not on every request.
    summary: OnceLock<AnswerSummary>,
}

impl Assembled {
    pub fn new(body: AnswerBody, usage: Option<Usage>, summary: AnswerSummary, complete: bool) -> Assembled {
        Assembled { body, usage, complete, summary: OnceLock::from(summary) }
    }

    /// A JSON answer's bytes, its summary left to be read when asked.
    fn from_json(body: AnswerBody, usage: Option<Usage>) -> Assembled {
        Assembled { body, usage, complete: true, summary: OnceLock::new() }
    }

    /// The `model` the upstream named in its answer, and one finish reason per choice in
    /// choice order (`stop`, `length`, `tool_calls`, ...).
    pub fn summary(&self) -> &AnswerSummary {
        self.summary.get_or_init(|| self.body.raw().map_or_else(AnswerSummary::default, |raw| json_summary(raw)))
    }
}

impl PartialEq for Assembled {
    fn eq(&self, other: &Assembled) -> bool {
        self.body == other.body
            && self.usage == other.usage
            && self.complete == other.complete
            && self.summary() == other.summary()
    }
}

/// An answer's JSON: a JSON answer's bytes as the upstream sent them, parsed into a tree only
/// when something reads it (a dataset line without redaction copies the bytes as they are);
/// or the tree a stream was folded into. Reads as a [`Value`].
#[derive(Debug, Clone, Default)]
pub struct AnswerBody {
    /// Valid JSON, when the body came as bytes.
    raw: Option<Bytes>,
    tree: OnceLock<Value>,
}

impl AnswerBody {
    /// `raw` must be valid JSON.
    fn from_valid_json(raw: Bytes) -> AnswerBody {
        AnswerBody { raw: Some(raw), tree: OnceLock::new() }
    }

    /// The upstream's bytes, for a body that came as JSON.
    pub fn raw(&self) -> Option<&Bytes> {
        self.raw.as_ref()
    }

    /// The tree, built now if it was not yet.
    pub fn into_value(mut self) -> Value {
        let _ = std::ops::Deref::deref(&self);
        self.tree.take().unwrap_or(Value::Null)
    }
}

impl From<Value> for AnswerBody {
    fn from(value: Value) -> AnswerBody {
        AnswerBody { raw: None, tree: OnceLock::from(value) }
    }
}

impl std::ops::Deref for AnswerBody {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.tree
            .get_or_init(|| self.raw.as_ref().and_then(|raw| serde_json::from_slice(raw).ok()).unwrap_or(Value::Null))
    }
}

impl PartialEq for AnswerBody {
    fn eq(&self, other: &AnswerBody) -> bool {
        **self == **other
    }
}

impl Serialize for AnswerBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.tree.get(), &self.raw) {
            (None, Some(raw)) => match serde_json::from_slice::<&RawValue>(raw) {
                Ok(raw) => raw.serialize(serializer),
                Err(_) => Value::Null.serialize(serializer),
            },
            _ => (**self).serialize(serializer),
        }
    }
}

/// Reads `bytes` (a whole answer) back into its non-streamed shape.
pub fn assemble(bytes: &[u8], sse: bool) -> Option<Assembled> {
    if sse { assemble_sse(bytes) } else { assemble_json(Bytes::copy_from_slice(bytes)) }
}

/// [`assemble`] of a buffer it may keep (a JSON answer's bytes are kept without a copy).
pub fn assemble_owned(bytes: Vec<u8>, sse: bool) -> Option<Assembled> {
    if sse { assemble_sse(&bytes) } else { assemble_json(Bytes::from(bytes)) }
}

fn assemble_json(bytes: Bytes) -> Option<Assembled> {
    // Only the usage is read now (and the JSON checked); the summary when a span asks. What
    // this cannot read (not an object, a field given twice) goes through the tree.
    #[derive(Deserialize)]
    struct UsageView<'a> {
        #[serde(borrow)]
        usage: Option<&'a RawValue>,
    }
    // Checked as text first: the fields it skips are not checked for UTF-8 as they are skipped.
    let Ok(text) = std::str::from_utf8(&bytes) else { return None };
    let Ok(view) = serde_json::from_str::<UsageView<'_>>(text) else { return assemble_json_tree(&bytes) };
    let usage = view.usage.and_then(usage_of_raw);
    Some(Assembled::from_json(AnswerBody::from_valid_json(bytes), usage))
}

/// A JSON answer's model and finish reasons, read as the tree would read them (a reason
/// that is not a string is none; a field given twice, the last).
pub(super) fn json_summary(bytes: &[u8]) -> AnswerSummary {
    let Ok(view) = serde_json::from_slice::<EventView<'_>>(bytes) else {
        let tree = serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
        return tree_summary(&tree);
    };
    AnswerSummary {
        model: view.model.0.map(Cow::into_owned),
        finish_reasons: view
            .choices
            .objects()
            .filter_map(|choice| choice.finish_reason.0.as_deref().map(str::to_owned))
            .collect(),
    }
}

fn tree_summary(body: &Value) -> AnswerSummary {
    let finish_reasons = body
        .get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices.iter().filter_map(|c| c.get("finish_reason").and_then(Value::as_str).map(str::to_owned)).collect()
        })
        .unwrap_or_default();
    AnswerSummary { model: body.get("model").and_then(Value::as_str).map(str::to_owned), finish_reasons }
}

/// A `usage` object's counts; `None` for `null` or another shape.
fn usage_of_raw(raw: &RawValue) -> Option<Usage> {
    serde_json::from_str::<RawUsage>(raw.get()).ok().map(Usage::from)
}

fn assemble_json_tree(bytes: &[u8]) -> Option<Assembled> {
    let body: Value = serde_json::from_slice(bytes).ok()?;
    let usage = usage_of(&body);
    let summary = tree_summary(&body);
    Some(Assembled::new(body.into(), usage, summary, true))
}

fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?;
    if usage.is_null() {
        return None;
    }
    serde_json::from_value::<RawUsage>(usage.clone()).ok().map(Usage::from)
}

/// One choice being rebuilt from its deltas.
#[derive(Debug, Default, Clone)]
struct ChoiceState {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    text: Option<String>,
    tool_calls: Vec<ToolCallState>,
    finish_reason: Option<String>,
    logprobs: Option<Value>,
    logprob_bytes: usize,
}

#[derive(Debug, Default, Clone)]
struct ToolCallState {
    index: u64,
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default, Clone)]
struct StreamState {
    id: Option<String>,
    object: Option<String>,
    created: Option<Value>,
    model: Option<String>,
    system_fingerprint: Option<String>,
    choices: Vec<(u64, ChoiceState)>,
    usage: Option<Usage>,
    usage_raw: Option<Value>,
    done: bool,
}

fn assemble_sse(bytes: &[u8]) -> Option<Assembled> {
    let mut assembler = SseAssembler::default();
    assembler.push(bytes);
    assembler.finish()
}

/// Folds an SSE answer as it streams: keeps the answer's text and fields and one unfinished
/// line, not the events (whose JSON around each delta is many times the delta's text).
#[derive(Debug, Clone)]
pub struct SseAssembler {
    /// No limit of its own: the capture bounds what [`SseAssembler::held`] counts.
    lines: Lines,
    events: EventFold,
}

/// The answer so far, and whether the stream still reads as one.
#[derive(Debug, Default, Clone)]
struct EventFold {
    state: StreamState,
    saw_event: bool,
    /// An error event, or bytes that are not UTF-8: the stream is no answer.
    spoiled: bool,
}

impl Default for SseAssembler {
    fn default() -> SseAssembler {
        SseAssembler { lines: Lines::new(usize::MAX), events: EventFold::default() }
    }
}

impl EventFold {
    fn line(&mut self, line: &[u8]) {
        if self.spoiled {
            return;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            self.spoiled = true;
            return;
        };
        let Some(data) = line.strip_prefix("data:") else { return };
        let data = data.trim_start();
        if data == "[DONE]" {
            self.state.done = true;
            return;
        }
        let Ok(event) = serde_json::from_str::<EventView<'_>>(data) else { return };
        if event.error.is_some() {
            // weir's own or the upstream's error event: the answer is not complete.
            self.spoiled = true;
            return;
        }
        self.saw_event = true;
        self.state.absorb(&event);
    }
}

impl SseAssembler {
    /// Reads the lines `chunk` completes (split anywhere; `\n` or `\r\n` line ends).
    pub fn push(&mut self, chunk: &[u8]) {
        let SseAssembler { lines, events } = self;
        lines.push(chunk, &mut |line| events.line(line.strip_suffix(b"\r").unwrap_or(line)));
    }

    /// The answer in its non-streamed shape; `None` after an error event, bytes that are
    /// not UTF-8, or no event at all.
    pub fn finish(mut self) -> Option<Assembled> {
        let last = self.lines.take_unfinished();
        if !last.is_empty() {
            self.events.line(&last);
        }
        let EventFold { state, saw_event, spoiled } = self.events;
        if spoiled || !saw_event {
            return None;
        }
        Some(state.finish())
    }

    /// Bytes of answer held so far: its text, tool calls and unfinished line (the fields
    /// every chunk repeats are kept once).
    pub fn held(&self) -> usize {
        let choices = self.events.state.choices.iter().map(|(_, c)| c.held()).fold(0usize, usize::saturating_add);
        choices.saturating_add(self.lines.unfinished().len())
    }

    /// The usage the stream reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.events.state.usage
    }

    /// The response model and each choice's finish reason so far (for spans).
    pub fn summary(&self) -> AnswerSummary {
        let mut choices: Vec<_> = self.events.state.choices.iter().collect();
        choices.sort_by_key(|(index, _)| *index);
        AnswerSummary {
            model: self.events.state.model.clone(),
            finish_reasons: choices.iter().filter_map(|(_, c)| c.finish_reason.clone()).collect(),
        }
    }
}

impl StreamState {
    fn absorb(&mut self, event: &EventView<'_>) {
        set_str(&mut self.id, &event.id);
        set_str(&mut self.object, &event.object);
        set_str(&mut self.model, &event.model);
        if self.created.is_none() {
            self.created = value_of(event.created);
        }
        // On every chunk, and the same on nearly all: copied only when it changes.
        if let Some(fp) = event.system_fingerprint.0.as_deref()
            && self.system_fingerprint.as_deref() != Some(fp)
        {
            self.system_fingerprint = Some(fp.to_owned());
        }
        if let Some(usage) = event.usage {
            self.usage = usage_of_raw(usage);
            self.usage_raw = value_of(Some(usage));
        }
        for choice in event.choices.objects() {
            let index = choice.index.0.unwrap_or(0);
            let slot = match self.choices.iter().position(|(i, _)| *i == index) {
                Some(pos) => pos,
                None => {
                    self.choices.push((index, ChoiceState::default()));
                    self.choices.len() - 1
                }
            };
            self.choices[slot].1.absorb(choice);
        }
    }

    fn finish(mut self) -> Assembled {
        self.choices.sort_by_key(|(i, _)| *i);
        let text_completion = self.object.as_deref() == Some("text_completion");
        let summary = AnswerSummary {
            model: self.model.clone(),
            finish_reasons: self.choices.iter().filter_map(|(_, c)| c.finish_reason.clone()).collect(),
        };
        let choices: Vec<Value> =
            self.choices.into_iter().map(|(index, c)| c.into_value(index, text_completion)).collect();
        let mut body = Map::new();
        body.insert("id".into(), self.id.map_or(Value::Null, Value::String));
        let object = if text_completion { "text_completion" } else { "chat.completion" };
        body.insert("object".into(), Value::String(object.into()));
        body.insert("created".into(), self.created.unwrap_or(json!(0)));
        body.insert("model".into(), self.model.clone().map_or(Value::Null, Value::String));
        body.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage_raw {
            body.insert("usage".into(), usage);
        }
        if let Some(fp) = self.system_fingerprint {
            body.insert("system_fingerprint".into(), Value::String(fp));
        }
        Assembled::new(Value::Object(body).into(), self.usage, summary, self.done)
    }
}

impl ChoiceState {
    fn held(&self) -> usize {
        let texts = [&self.content, &self.refusal, &self.text].into_iter().flatten().map(String::len);
        let calls = self.tool_calls.iter().map(|c| c.name.len().saturating_add(c.arguments.len()));
        texts.chain(calls).fold(self.logprob_bytes, usize::saturating_add)
    }

    fn absorb(&mut self, choice: &ChoiceView<'_>) {
        if let Some(reason) = choice.finish_reason.0.as_deref() {
            self.finish_reason = Some(reason.to_owned());
        }
        append(&mut self.text, &choice.text);
        if let Some(raw) = choice.logprobs {
            // Counted as their JSON text, so the capture's bound covers them too.
            self.logprob_bytes = self.logprob_bytes.saturating_add(raw.get().len());
            if let Some(logprobs) = value_of(Some(raw)) {
                append_logprobs(&mut self.logprobs, &logprobs);
            }
        }
        let Some(delta) = &choice.delta.0 else { return };
        set_str(&mut self.role, &delta.role);
        append(&mut self.content, &delta.content);
        append(&mut self.refusal, &delta.refusal);
        for call in delta.tool_calls.objects() {
            self.absorb_tool_call(call);
        }
    }

    fn absorb_tool_call(&mut self, call: &ToolCallView<'_>) {
        let index = call.index.0.unwrap_or(self.tool_calls.len() as u64);
        let slot = match self.tool_calls.iter().position(|t| t.index == index) {
            Some(pos) => pos,
            None => {
                self.tool_calls.push(ToolCallState { index, ..ToolCallState::default() });
                self.tool_calls.len() - 1
            }
        };
        let state = &mut self.tool_calls[slot];
        set_str(&mut state.id, &call.id);
        set_str(&mut state.kind, &call.kind);
        if let Some(function) = &call.function.0 {
            if let Some(name) = function.name.0.as_deref() {
                state.name.push_str(name);
            }
            if let Some(arguments) = function.arguments.0.as_deref() {
                state.arguments.push_str(arguments);
            }
        }
    }

    fn into_value(self, index: u64, text_completion: bool) -> Value {
        let finish_reason = self.finish_reason.map_or(Value::Null, Value::String);
        let logprobs = self.logprobs.unwrap_or(Value::Null);
        if text_completion {
            let text = self.text.unwrap_or_default();
            return json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason});
        }
        let mut message = Map::new();
        message.insert("role".into(), Value::String(self.role.unwrap_or_else(|| "assistant".into())));
        message.insert("content".into(), self.content.map_or(Value::Null, Value::String));
        if let Some(refusal) = self.refusal {
            message.insert("refusal".into(), Value::String(refusal));
        }
        if !self.tool_calls.is_empty() {
            let mut calls = self.tool_calls;
            calls.sort_by_key(|c| c.index);
            let calls = calls
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": c.kind.unwrap_or_else(|| "function".into()),
                        "function": {"name": c.name, "arguments": c.arguments},
                    })
                })
                .collect();
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        json!({"index": index, "message": Value::Object(message), "logprobs": logprobs, "finish_reason": finish_reason})
    }
}

/// A stream sends each token's log probabilities with its chunk (`{"content": [...]}` for
/// chat, parallel `tokens`/`token_logprobs`/... lists for completions): the lists are joined
/// field by field, so the answer has every token's, not only the last chunk's.
fn append_logprobs(kept: &mut Option<Value>, more: &Value) {
    let (Some(Value::Object(kept)), Some(more)) = (kept.as_mut(), more.as_object()) else {
        *kept = Some(more.clone());
        return;
    };
    for (field, items) in more {
        match (kept.get_mut(field).and_then(Value::as_array_mut), items.as_array()) {
            (Some(list), Some(items)) => list.extend(items.iter().cloned()),
            _ => {
                kept.insert(field.clone(), items.clone());
            }
        }
    }
}

/// Keeps the first non-empty string seen for a field that repeats on every chunk.
fn set_str(slot: &mut Option<String>, value: &Text<'_>) {
    if slot.is_none() {
        if let Some(s) = value.0.as_deref().filter(|s| !s.is_empty()) {
            *slot = Some(s.to_owned());
        }
    }
}

/// Appends a delta's text, if it has one.
fn append(slot: &mut Option<String>, value: &Text<'_>) {
    if let Some(text) = value.0.as_deref() {
        slot.get_or_insert_with(String::new).push_str(text);
    }
}

fn value_of(raw: Option<&RawValue>) -> Option<Value> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// What the fold reads of one stream event, borrowed from its text and read in one pass
/// ([`super::json`]'s lenient fields: a field of an unexpected type is skipped, not the
/// event). The fields kept whole (`created`, `usage`, ...) are kept raw and parsed when used
/// (a `Value` of every event cost more than the rest of the stream's path).
#[derive(Deserialize, Default)]
#[serde(default)]
struct EventView<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    object: Text<'a>,
    #[serde(borrow)]
    model: Text<'a>,
    #[serde(borrow)]
    created: Option<&'a RawValue>,
    #[serde(borrow)]
    system_fingerprint: Text<'a>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    choices: List<Obj<ChoiceView<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChoiceView<'a> {
    index: Uint,
    #[serde(borrow)]
    finish_reason: Text<'a>,
    #[serde(borrow)]
    text: Text<'a>,
    #[serde(borrow)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Obj<DeltaView<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeltaView<'a> {
    #[serde(borrow)]
    role: Text<'a>,
    #[serde(borrow)]
    content: Text<'a>,
    #[serde(borrow)]
    refusal: Text<'a>,
    #[serde(borrow)]
    tool_calls: List<Obj<ToolCallView<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolCallView<'a> {
    index: Uint,
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    function: Obj<FunctionView<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FunctionView<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    arguments: Text<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answer_keeps_usage_and_finish() {
        let body = br#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        let a = assemble(body, false).unwrap();
        assert_eq!(
            a.usage,
            Some(Usage { prompt_tokens: 3, completion_tokens: 1, cached_tokens: 2, cache_write_tokens: 0 })
        );
        assert_eq!(a.summary().finish_reasons, vec!["stop".to_owned()]);
        assert_eq!(a.summary().model.as_deref(), Some("m"));
    }

    #[test]
    fn stream_folds_content_tools_and_usage() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n"
        );
        let a = assemble(sse.as_bytes(), true).unwrap();
        assert!(a.complete);
        assert_eq!(
            a.usage,
            Some(Usage { prompt_tokens: 5, completion_tokens: 2, cached_tokens: 0, cache_write_tokens: 0 })
        );
        assert_eq!(a.summary().finish_reasons, vec!["tool_calls".to_owned()]);
        let message = &a.body["choices"][0]["message"];
        assert_eq!(message["content"], "Hello");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(message["tool_calls"][0]["id"], "call_1");
        assert_eq!(a.body["object"], "chat.completion");
        assert_eq!(a.body["system_fingerprint"], "fp_1", "kept past the chunks without one");
    }

    #[test]
    fn a_field_of_an_unexpected_type_is_skipped_not_its_event() {
        let sse = concat!(
            "data: {\"id\":7,\"model\":[\"m\"],\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"He\\u006c\"}}]}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":{\"x\":1}},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[\"garbage\",{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let a = assemble(sse.as_bytes(), true).unwrap();
        // An escaped string is read as its text; a number id and a list model are skipped.
        assert_eq!(a.body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(a.body["id"], Value::Null);
        assert_eq!(a.summary().model.as_deref(), Some("m"));
        assert_eq!(a.summary().finish_reasons, vec!["stop".to_owned()]);
        assert_eq!(a.body["choices"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn nested_objects_of_an_unexpected_type_are_skipped_not_their_event() {
        let sse = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"index\":-1,\"delta\":\"x\"},{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":[1]},7,{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":null}}]}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let a = assemble(sse.as_bytes(), true).unwrap();
        // A negative index reads as none (choice 0); a delta or a function that is not an
        // object, and a call that is a number, are skipped.
        let message = &a.body["choices"][0]["message"];
        assert_eq!(message["content"], "a");
        assert_eq!(message["tool_calls"].as_array().map(Vec::len), Some(1));
        assert_eq!(message["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "");
    }

    #[test]
    fn a_list_of_an_unexpected_type_is_skipped_not_its_event() {
        let sse = concat!(
            "data: {\"model\":\"m\",\"choices\":5}\n\n",
            "data: {\"id\":\"c\",\"choices\":{\"index\":0,\"delta\":{\"content\":\"no\"}}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\",\"tool_calls\":\"x\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":null,\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let a = assemble(sse.as_bytes(), true).unwrap();
        assert_eq!(a.summary().model.as_deref(), Some("m"));
        assert_eq!(a.body["id"], "c");
        assert_eq!(a.body["choices"][0]["message"]["content"], "ok");
        assert_eq!(a.usage.map(|u| u.prompt_tokens), Some(1));
        let json = assemble(br#"{"model":"m","choices":"x"}"#, false).unwrap();
        assert!(json.summary().finish_reasons.is_empty());
    }

    #[test]
    fn a_json_answer_is_read_for_usage_now_and_for_its_summary_when_asked() {
        let answer =
            br#"{"model":"m","choices":[{"finish_reason":"stop"},{"finish_reason":7}],"usage":{"prompt_tokens":2}}"#;
        let a = assemble(answer, false).unwrap();
        assert_eq!(a.usage.map(|u| u.prompt_tokens), Some(2));
        assert!(a.summary.get().is_none(), "not read until asked");
        assert_eq!(a.summary(), &AnswerSummary { model: Some("m".into()), finish_reasons: vec!["stop".into()] });
        // Bytes that are not UTF-8 are not JSON, even inside a field only skipped over.
        assert!(assemble(b"{\"model\":\"\xff\",\"usage\":null}", false).is_none());
        // A field given twice: read as the tree reads it (the last one).
        let twice = assemble(br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":5}}"#, false).unwrap();
        assert_eq!(twice.usage.map(|u| u.prompt_tokens), Some(5));
    }

    #[test]
    fn a_streams_logprobs_are_joined_not_replaced() {
        let chunk = |token: &str| {
            format!(
                "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{token}\"}},\"logprobs\":{{\"content\":[{{\"token\":\"{token}\",\"logprob\":-0.5}}],\"refusal\":null}}}}]}}\n\n"
            )
        };
        let sse = format!("{}{}data: [DONE]\n\n", chunk("a"), chunk("b"));
        let answer = assemble(sse.as_bytes(), true).unwrap();
        let tokens: Vec<_> = answer.body["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        assert_eq!(tokens, ["a", "b"]);
    }

    #[test]
    fn stream_with_error_event_is_not_an_answer() {
        let sse = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"cut\"}}\n\n";
        assert!(assemble(sse.as_bytes(), true).is_none());
    }

    #[test]
    fn the_stream_assembler_gives_the_same_answer_however_the_stream_is_split() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"}}]}\r\n\r\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]"
        );
        let whole = assemble(sse.as_bytes(), true).unwrap();
        assert_eq!(whole.body["choices"][0]["message"]["content"], "Héllo");
        assert!(whole.complete, "a last line without its line end still counts");
        for split in 0..sse.len() {
            let mut assembler = SseAssembler::default();
            assembler.push(&sse.as_bytes()[..split]);
            assembler.push(&sse.as_bytes()[split..]);
            assert_eq!(assembler.summary().finish_reasons, ["stop"]);
            assert_eq!(assembler.finish().as_ref(), Some(&whole), "split at {split}");
        }
    }

    #[test]
    fn stream_without_done_is_incomplete() {
        let sse = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
        assert!(!assemble(sse.as_bytes(), true).unwrap().complete);
    }
}
