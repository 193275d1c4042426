//! One finished request as OpenTelemetry spans: a server span and a client span per
//! upstream attempt, with the GenAI semantic-convention attributes of SPEC §5.
//!
//! Owns: [`SpanRecord`], the plain data copied out of a finished [`Record`] (a few clones,
//! no parsing), and its encoding as OTLP protobuf spans on the export task, where the
//! request body is read for temperature and token limits and content is attached.
//! Must not: run on the request's task beyond [`SpanRecord::from_record`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::proto::{self, Attributes};
use crate::wire::{AttemptKind, Endpoint, Outcome, Record, SpanIds, Usage};

/// Field numbers of `opentelemetry.proto.trace.v1`.
const SCOPE_SPANS_SPAN: u32 = 2;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_EVENTS: u32 = 11;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
const EVENT_TIME: u32 = 1;
const EVENT_NAME: u32 = 2;
const EVENT_ATTRIBUTES: u32 = 3;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const STATUS_ERROR: u64 = 2;
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;

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
    /// `(id, version)` of the prompt rendered into the request.
    prompt: Option<(String, String)>,
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
            (Some(a), _) => (a.summary().model.clone(), a.summary().finish_reasons.clone()),
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
            prompt: record.prompt.as_ref().map(|p| (p.id.clone(), p.version.clone())),
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

    /// Spans [`SpanRecord::encode`] writes: the server span and one per attempt.
    pub fn span_count(&self) -> usize {
        1 + self.attempts.len()
    }

    /// Appends the server span and its attempt spans to `spans`, each as a `ScopeSpans.spans`
    /// entry (see `export`, which wraps them into a request).
    pub fn encode(&self, spans: &mut Vec<u8>, capture_content: bool) {
        for (index, attempt) in self.attempts.iter().enumerate() {
            proto::message(spans, SCOPE_SPANS_SPAN, |span| self.attempt_span(span, index, attempt));
        }
        proto::message(spans, SCOPE_SPANS_SPAN, |span| self.server_span(span, capture_content));
    }

    /// The fields every span has: ids, flags, name, kind and times.
    fn span_head(&self, span: &mut Vec<u8>, head: SpanHead<'_>) {
        proto::bytes(span, SPAN_TRACE_ID, &self.ids.trace_id.to_be_bytes());
        proto::bytes(span, SPAN_SPAN_ID, &head.span_id.to_be_bytes());
        if let Some(parent) = head.parent {
            proto::bytes(span, SPAN_PARENT_SPAN_ID, &parent.to_be_bytes());
        }
        proto::fixed32(span, SPAN_FLAGS, span_flags(self.ids.sampled, head.parent_is_remote));
        proto::string_parts(span, SPAN_NAME, head.name);
        proto::uint(span, SPAN_KIND, head.kind);
        proto::fixed64(span, SPAN_START, unix_nanos(head.start));
        proto::fixed64(span, SPAN_END, unix_nanos(head.start + head.duration));
    }

    fn server_span(&self, span: &mut Vec<u8>, capture_content: bool) {
        let request = RequestParams::read(&self.request_body);
        let name: &[&str] = match &self.model {
            Some(model) => &[self.operation, " ", model],
            None => &[self.operation],
        };
        let head = SpanHead {
            span_id: self.ids.span_id,
            parent: self.ids.parent,
            parent_is_remote: self.ids.parent.is_some(),
            name,
            kind: KIND_SERVER,
            start: self.start,
            duration: self.duration,
        };
        self.span_head(span, head);
        self.server_attributes(&mut Attributes::new(span, SPAN_ATTRIBUTES), &request);
        if capture_content {
            self.content_events(span, &request);
        }
        if self.failed() {
            error_status(span, self.error.as_deref());
        }
    }

    fn failed(&self) -> bool {
        self.status >= 500 || self.outcome == Outcome::Failed
    }

    fn server_attributes(&self, attributes: &mut Attributes<'_>, request: &RequestParams<'_>) {
        attributes.str("gen_ai.operation.name", self.operation);
        attributes.str("gen_ai.request.model", &self.requested_model);
        attributes.int("http.response.status_code", i64::from(self.status));
        attributes.str("weir.request_id", &self.request_id);
        attributes.str("weir.key", &self.key);
        attributes.str("weir.cache", self.cache);
        attributes.boolean("weir.stream", self.stream);
        attributes.str("weir.outcome", outcome_str(self.outcome));
        if let Some(provider) = self.provider {
            attributes.str("gen_ai.provider.name", provider);
        }
        if !self.backend.is_empty() {
            attributes.str("weir.backend", &self.backend);
            attributes.str("weir.variant", &self.variant);
        }
        if let Some(experiment) = &self.experiment {
            attributes.str("weir.experiment", experiment);
        }
        if let Some((id, version)) = &self.prompt {
            attributes.str("weir.prompt.id", id);
            attributes.str("weir.prompt.version", version);
        }
        if let Some(client_request_id) = &self.client_request_id {
            attributes.str("weir.client_request_id", client_request_id);
        }
        if let Some(model) = &self.response_model {
            attributes.str("gen_ai.response.model", &truncate(model, TEXT_LIMIT));
        }
        request.write_attributes(attributes);
        if let Some(usage) = self.usage {
            attributes.int("gen_ai.usage.input_tokens", clamp_i64(usage.prompt_tokens));
            attributes.int("gen_ai.usage.output_tokens", clamp_i64(usage.completion_tokens));
            if usage.cached_tokens > 0 {
                attributes.int("gen_ai.usage.cache_read.input_tokens", clamp_i64(usage.cached_tokens));
            }
        }
        if !self.finish_reasons.is_empty() {
            attributes.strings("gen_ai.response.finish_reasons", self.finish_reasons.iter().map(String::as_str));
        }
        if let Some(cost) = self.cost_usd {
            attributes.float("weir.cost_usd", cost);
        }
        if let (true, Some(first_byte)) = (self.stream, self.first_byte) {
            attributes.float("weir.time_to_first_token_ms", first_byte.as_secs_f64() * 1000.0);
        }
        if self.failed() {
            let status = self.status.to_string();
            attributes.str("error.type", if self.outcome == Outcome::Failed { "midstream" } else { &status });
        }
    }

    fn attempt_span(&self, span: &mut Vec<u8>, index: usize, attempt: &AttemptRecord) {
        let head = SpanHead {
            span_id: self.ids.attempt_span_id(index),
            parent: Some(self.ids.span_id),
            parent_is_remote: false,
            name: &[self.operation, " ", &attempt.model],
            kind: KIND_CLIENT,
            start: self.start + attempt.offset,
            duration: attempt.duration,
        };
        self.span_head(span, head);
        let mut attributes = Attributes::new(span, SPAN_ATTRIBUTES);
        attributes.str("gen_ai.operation.name", self.operation);
        attributes.str("gen_ai.request.model", &attempt.model);
        attributes.str("weir.backend", &attempt.backend);
        attributes.str("weir.variant", &attempt.variant);
        attributes.int("weir.attempt", clamp_i64(index as u64 + 1));
        attributes.str("weir.attempt.kind", attempt_kind(attempt.kind));
        if let Some(provider) = attempt.provider {
            attributes.str("gen_ai.provider.name", provider);
        }
        if let Some(status) = attempt.status {
            attributes.int("http.response.status_code", i64::from(status));
        }
        let failed = attempt.error.is_some() || attempt.status.is_some_and(|s| s >= 400);
        if failed {
            let kind = attempt.status.map_or_else(|| "error".to_owned(), |s| s.to_string());
            attributes.str("error.type", &kind);
            error_status(span, attempt.error.as_deref());
        }
    }

    /// `gen_ai.content.prompt` and `gen_ai.content.completion` events, each cut to
    /// [`CONTENT_LIMIT`].
    fn content_events(&self, span: &mut Vec<u8>, request: &RequestParams<'_>) {
        if let Some(prompt) = request.prompt {
            content_event(span, "gen_ai.content.prompt", self.start, "gen_ai.prompt", prompt.get());
        }
        if let Some(completion) = &self.completion {
            let text = completion.to_string();
            content_event(span, "gen_ai.content.completion", self.start + self.duration, "gen_ai.completion", &text);
        }
    }
}

/// What differs between the head of a server span and of an attempt span.
struct SpanHead<'a> {
    span_id: u64,
    parent: Option<u64>,
    parent_is_remote: bool,
    name: &'a [&'a str],
    kind: u64,
    start: SystemTime,
    duration: Duration,
}

/// An event with one text attribute, cut to [`CONTENT_LIMIT`] (and then marked).
fn content_event(span: &mut Vec<u8>, name: &str, at: SystemTime, attribute: &str, text: &str) {
    proto::message(span, SPAN_EVENTS, |event| {
        proto::fixed64(event, EVENT_TIME, unix_nanos(at));
        proto::string(event, EVENT_NAME, name);
        let cut = truncate(text, CONTENT_LIMIT);
        let mut attributes = Attributes::new(event, EVENT_ATTRIBUTES);
        attributes.str(attribute, &cut);
        if cut.len() < text.len() {
            attributes.boolean("weir.truncated", true);
        }
    });
}

/// OTLP span flags: the W3C trace flags, and whether the parent is known to be remote.
fn span_flags(sampled: bool, parent_is_remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    let mut flags = u32::from(sampled) | HAS_IS_REMOTE;
    if parent_is_remote {
        flags |= IS_REMOTE;
    }
    flags
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
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

    fn write_attributes(&self, attributes: &mut Attributes<'_>) {
        if let Some(t) = self.temperature {
            attributes.float("gen_ai.request.temperature", t);
        }
        if let Some(p) = self.top_p {
            attributes.float("gen_ai.request.top_p", p);
        }
        if let Some(max) = self.max_completion_tokens.or(self.max_tokens) {
            attributes.int("gen_ai.request.max_tokens", clamp_i64(max));
        }
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

/// An error `Status` with its message, cut to [`TEXT_LIMIT`].
fn error_status(span: &mut Vec<u8>, message: Option<&str>) {
    proto::message(span, SPAN_STATUS, |status| {
        proto::string(status, STATUS_MESSAGE, &truncate(message.unwrap_or("error"), TEXT_LIMIT));
        proto::uint(status, STATUS_CODE, STATUS_ERROR);
    });
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, span::SpanKind, status::StatusCode};
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_failed_request_encodes_as_a_server_span_with_an_error_status() {
        let mut record = Record::new("req_1".into(), std::time::Instant::now());
        record.model = "a".repeat(300);
        record.status = 502;
        record.error = Some("upstream refused".into());
        record.duration = Duration::from_millis(7);
        let ids = SpanIds { trace_id: 0x0102, span_id: 0x0304, parent: Some(0x0506), sampled: true };
        let mut encoded = Vec::new();
        SpanRecord::from_record(&record, ids, false).encode(&mut encoded, false);

        let decoded = ScopeSpans::decode(encoded.as_slice()).expect("valid ScopeSpans.spans entries");
        let [span] = &decoded.spans[..] else { panic!("one span: {decoded:?}") };
        assert_eq!(span.trace_id, 0x0102u128.to_be_bytes());
        assert_eq!(span.span_id, 0x0304u64.to_be_bytes());
        assert_eq!(span.parent_span_id, 0x0506u64.to_be_bytes());
        assert_eq!(span.flags, 0x301, "sampled, parent known to be remote");
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(span.name, "chat", "an unconfigured model does not name the span");
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 7_000_000);
        let status = span.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "upstream refused"));
        let attribute = |key: &str| span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone());
        let text = |key: &str| match attribute(key).and_then(|v| v.value) {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s,
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("error.type"), "502");
        assert_eq!(text("gen_ai.request.model").len(), TEXT_LIMIT, "client text is bounded");
        assert!(matches!(
            attribute("http.response.status_code").and_then(|v| v.value),
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(502))
        ));
    }
}
