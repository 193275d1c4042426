//! One finished request as OpenTelemetry spans: a server span and a client span per
//! upstream attempt, with the GenAI semantic-convention attributes of SPEC §5.
//!
//! Owns: [`SpanRecord`], the plain data copied out of a finished [`Record`] (a few clones,
//! no parsing), and its conversion into `SpanData` on the export task, where
//! the request body is read for temperature and token limits and content is attached.
//! Must not: run on the request's task beyond [`SpanRecord::from_record`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::wire::{AttemptKind, Endpoint, Outcome, Record, SpanIds, Usage};

/// Longest prompt or completion text put on a span event; longer ones are cut (and marked).
pub const CONTENT_LIMIT: usize = 32 * 1024;
/// Longest client-supplied string (an unknown model name) copied onto a span.
const TEXT_LIMIT: usize = 256;

/// What the spans of one request are built from.
#[derive(Debug)]
pub struct SpanRecord {
    ids: SpanIds,
    start: SystemTime,
    duration: Duration,
    operation: &'static str,
    /// The public model when configured (then it names the span).
    model: Option<String>,
    requested_model: String,
    provider: Option<&'static str>,
    backend: String,
    variant: String,
    key: String,
    experiment: Option<String>,
    request_id: String,
    client_request_id: Option<String>,
    stream: bool,
    status: u16,
    cache: &'static str,
    outcome: Outcome,
    error: Option<String>,
    usage: Option<Usage>,
    cost_usd: Option<f64>,
    response_model: Option<String>,
    finish_reasons: Vec<String>,
    first_byte: Option<Duration>,
    attempts: Vec<AttemptRecord>,
    request_body: Bytes,
    /// The assembled answer's `choices` (or `data`), when content is captured.
    completion: Option<serde_json::Value>,
}

#[derive(Debug)]
struct AttemptRecord {
    kind: AttemptKind,
    backend: String,
    provider: Option<&'static str>,
    model: String,
    variant: String,
    offset: Duration,
    duration: Duration,
    status: Option<u16>,
    error: Option<String>,
}

impl SpanRecord {
    pub fn from_record(record: &Record, ids: SpanIds, capture_content: bool) -> SpanRecord {
        let configured = record.model_configured;
        let (response_model, finish_reasons) = match (&record.assembled, &record.answer_summary) {
            (Some(a), _) => (a.response_model.clone(), a.finish_reasons.clone()),
            (None, Some(s)) => (s.model.clone(), s.finish_reasons.clone()),
            (None, None) => (None, Vec::new()),
        };
        let attempts = record
            .attempts
            .iter()
            .enumerate()
            .map(|(index, a)| AttemptRecord {
                kind: a.kind,
                backend: a.backend.clone(),
                provider: Some(a.provider),
                model: a.model.clone(),
                variant: a.variant.clone(),
                offset: a.offset,
                duration: record.backend_time(index),
                status: a.status,
                error: a.error.clone(),
            })
            .collect();
        let completion = match (&record.assembled, capture_content) {
            (Some(a), true) => a.body.get("choices").or_else(|| a.body.get("data")).cloned(),
            _ => None,
        };
        SpanRecord {
            ids,
            start: SystemTime::now().checked_sub(record.duration).unwrap_or_else(SystemTime::now),
            duration: record.duration,
            operation: record.endpoint.map_or("chat", Endpoint::operation),
            model: configured.then(|| record.model.clone()),
            requested_model: truncate(&record.model, TEXT_LIMIT).into_owned(),
            provider: record.provider,
            backend: record.backend.clone(),
            variant: record.variant.clone(),
            key: record.key.clone(),
            experiment: record.experiment.clone(),
            request_id: record.request_id.clone(),
            client_request_id: record.client_request_id.clone(),
            stream: record.stream,
            status: record.status,
            cache: record.cache.as_str(),
            outcome: record.outcome,
            error: record.error.clone(),
            usage: record.usage,
            cost_usd: record.cost_usd,
            response_model,
            finish_reasons,
            first_byte: record.first_byte,
            attempts,
            request_body: record.request_body.clone(),
            completion,
        }
    }

    /// Rough export size, to keep batches under collectors' message limits.
    pub fn approx_size(&self) -> usize {
        let content = if self.completion.is_some() { 2 * CONTENT_LIMIT } else { 0 };
        1024 * (1 + self.attempts.len()) + content
    }

    /// The server span and its attempt spans.
    pub fn into_spans(self, scope: &InstrumentationScope, capture_content: bool) -> Vec<SpanData> {
        let mut spans = Vec::with_capacity(1 + self.attempts.len());
        for (index, attempt) in self.attempts.iter().enumerate() {
            spans.push(self.attempt_span(index, attempt, scope));
        }
        spans.push(self.server_span(scope, capture_content));
        spans
    }

    fn context(&self, span_id: u64) -> SpanContext {
        let flags = if self.ids.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(TraceId::from(self.ids.trace_id), SpanId::from(span_id), flags, false, TraceState::default())
    }

    fn server_span(&self, scope: &InstrumentationScope, capture_content: bool) -> SpanData {
        let request = RequestParams::read(&self.request_body);
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.request.model", self.requested_model.clone()),
            KeyValue::new("http.response.status_code", i64::from(self.status)),
            KeyValue::new("weir.request_id", self.request_id.clone()),
            KeyValue::new("weir.key", self.key.clone()),
            KeyValue::new("weir.cache", self.cache),
            KeyValue::new("weir.stream", self.stream),
            KeyValue::new("weir.outcome", outcome_str(self.outcome)),
        ];
        if let Some(provider) = self.provider {
            attributes.push(KeyValue::new("gen_ai.provider.name", provider));
        }
        if !self.backend.is_empty() {
            attributes.push(KeyValue::new("weir.backend", self.backend.clone()));
            attributes.push(KeyValue::new("weir.variant", self.variant.clone()));
        }
        if let Some(experiment) = &self.experiment {
            attributes.push(KeyValue::new("weir.experiment", experiment.clone()));
        }
        if let Some(client_request_id) = &self.client_request_id {
            attributes.push(KeyValue::new("weir.client_request_id", client_request_id.clone()));
        }
        if let Some(model) = &self.response_model {
            attributes.push(KeyValue::new("gen_ai.response.model", truncate(model, TEXT_LIMIT).into_owned()));
        }
        request.push_attributes(&mut attributes);
        if let Some(usage) = self.usage {
            attributes.push(KeyValue::new("gen_ai.usage.input_tokens", clamp_i64(usage.prompt_tokens)));
            attributes.push(KeyValue::new("gen_ai.usage.output_tokens", clamp_i64(usage.completion_tokens)));
            if usage.cached_tokens > 0 {
                attributes.push(KeyValue::new("gen_ai.usage.cache_read.input_tokens", clamp_i64(usage.cached_tokens)));
            }
        }
        if !self.finish_reasons.is_empty() {
            let reasons: Vec<StringValue> = self.finish_reasons.iter().map(|r| StringValue::from(r.clone())).collect();
            attributes.push(KeyValue::new("gen_ai.response.finish_reasons", Value::Array(Array::String(reasons))));
        }
        if let Some(cost) = self.cost_usd {
            attributes.push(KeyValue::new("weir.cost_usd", cost));
        }
        if let (true, Some(first_byte)) = (self.stream, self.first_byte) {
            attributes.push(KeyValue::new("weir.time_to_first_token_ms", first_byte.as_secs_f64() * 1000.0));
        }
        let failed = self.status >= 500 || self.outcome == Outcome::Failed;
        if failed {
            let kind = if self.outcome == Outcome::Failed { "midstream".to_owned() } else { self.status.to_string() };
            attributes.push(KeyValue::new("error.type", kind));
        }
        let events = if capture_content { self.content_events(&request) } else { Vec::new() };
        let name = match &self.model {
            Some(model) => format!("{} {model}", self.operation),
            None => self.operation.to_owned(),
        };
        SpanData {
            span_context: self.context(self.ids.span_id),
            parent_span_id: self.ids.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: self.ids.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: self.start + self.duration,
            attributes,
            dropped_attributes_count: 0,
            events: {
                let mut all = SpanEvents::default();
                all.events = events;
                all
            },
            links: SpanLinks::default(),
            status: if failed { error_status(self.error.as_deref()) } else { Status::Unset },
            instrumentation_scope: scope.clone(),
        }
    }

    fn attempt_span(&self, index: usize, attempt: &AttemptRecord, scope: &InstrumentationScope) -> SpanData {
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", self.operation),
            KeyValue::new("gen_ai.request.model", attempt.model.clone()),
            KeyValue::new("weir.backend", attempt.backend.clone()),
            KeyValue::new("weir.variant", attempt.variant.clone()),
            KeyValue::new("weir.attempt", clamp_i64(index as u64 + 1)),
            KeyValue::new("weir.attempt.kind", attempt_kind(attempt.kind)),
        ];
        if let Some(provider) = attempt.provider {
            attributes.push(KeyValue::new("gen_ai.provider.name", provider));
        }
        if let Some(status) = attempt.status {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        let failed = attempt.error.is_some() || attempt.status.is_some_and(|s| s >= 400);
        if failed {
            let kind = attempt.status.map_or_else(|| "error".to_owned(), |s| s.to_string());
            attributes.push(KeyValue::new("error.type", kind));
        }
        let start = self.start + attempt.offset;
        SpanData {
            span_context: self.context(self.ids.attempt_span_id(index)),
            parent_span_id: SpanId::from(self.ids.span_id),
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Owned(format!("{} {}", self.operation, attempt.model)),
            start_time: start,
            end_time: start + attempt.duration,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if failed { error_status(attempt.error.as_deref()) } else { Status::Unset },
            instrumentation_scope: scope.clone(),
        }
    }

    /// `gen_ai.content.prompt` and `gen_ai.content.completion` events, each cut to
    /// [`CONTENT_LIMIT`].
    fn content_events(&self, request: &RequestParams<'_>) -> Vec<Event> {
        let mut events = Vec::with_capacity(2);
        if let Some(prompt) = request.prompt {
            let (text, cut) = limited(prompt.get().to_owned());
            let mut attributes = vec![KeyValue::new("gen_ai.prompt", text)];
            if cut {
                attributes.push(KeyValue::new("weir.truncated", true));
            }
            events.push(Event::new("gen_ai.content.prompt", self.start, attributes, 0));
        }
        if let Some(completion) = &self.completion {
            let (text, cut) = limited(completion.to_string());
            let mut attributes = vec![KeyValue::new("gen_ai.completion", text)];
            if cut {
                attributes.push(KeyValue::new("weir.truncated", true));
            }
            events.push(Event::new("gen_ai.content.completion", self.start + self.duration, attributes, 0));
        }
        events
    }
}

/// What the spans read from the client's request body.
#[derive(Debug, Default, Deserialize)]
struct RequestParams<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    /// `messages` (chat), `prompt` (completions) or `input` (embeddings).
    /// Borrowed as written: only captured content needs it.
    #[serde(borrow, alias = "messages", alias = "input")]
    prompt: Option<&'a RawValue>,
}

impl RequestParams<'_> {
    fn read(body: &[u8]) -> RequestParams<'_> {
        serde_json::from_slice(body).unwrap_or_default()
    }

    fn push_attributes(&self, attributes: &mut Vec<KeyValue>) {
        if let Some(t) = self.temperature {
            attributes.push(KeyValue::new("gen_ai.request.temperature", t));
        }
        if let Some(p) = self.top_p {
            attributes.push(KeyValue::new("gen_ai.request.top_p", p));
        }
        if let Some(max) = self.max_completion_tokens.or(self.max_tokens) {
            attributes.push(KeyValue::new("gen_ai.request.max_tokens", clamp_i64(max)));
        }
    }
}

fn limited(text: String) -> (String, bool) {
    match truncate(&text, CONTENT_LIMIT) {
        Cow::Borrowed(_) => (text, false),
        Cow::Owned(cut) => (cut, true),
    }
}

/// `text` cut to at most `limit` bytes on a character boundary.
fn truncate(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(text[..end].to_owned())
}

fn error_status(message: Option<&str>) -> Status {
    Status::error(truncate(message.unwrap_or("error"), TEXT_LIMIT).into_owned())
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Failed => "failed",
        Outcome::ClientGone => "client_gone",
    }
}

fn attempt_kind(kind: AttemptKind) -> &'static str {
    match kind {
        AttemptKind::Primary => "primary",
        AttemptKind::Retry => "retry",
        AttemptKind::Fallback => "fallback",
    }
}
