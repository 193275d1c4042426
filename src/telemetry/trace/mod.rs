//! Traces: one server span per request and a client span per upstream attempt, exported
//! over OTLP (gRPC or HTTP/protobuf) by a task of their own.
//!
//! Owns: the [`Tracer`] (config, export queue), the trace context of each request
//! ([`context`]) and the span contents ([`spans`]).
//! Must not: slow a request. The request path only decides ids and sampling when it starts
//! and, when it finishes, copies plain data into a bounded queue (`try_send`: a full queue
//! drops the trace). Spans are built and exported on the export task; its failure degrades
//! tracing, never requests.
//!
//! Why not the SDK's `Tracer`: it draws span ids when a span starts, but weir must put the
//! attempt's span id into the upstream `traceparent` before the span exists, and builds
//! spans after the fact with exact start and end times. So spans are `SpanData` made here
//! and handed to `opentelemetry-otlp`'s exporter directly.

pub mod context;
mod export;
mod spans;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::proxy::{Exchange, Outcome};

pub use context::{SpanIds, TRACEPARENT, TraceContext};

/// Requests whose spans may wait for export; past this, traces are dropped.
const QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP exporter for {endpoint}: {detail}")]
    Exporter { endpoint: String, detail: String },
    #[error("tracing needs the async runtime, and none is running")]
    NoRuntime,
}

/// Span export, configured by `telemetry:`. Shared by snapshots whose telemetry config is
/// the same; a reload with a different one starts a new tracer, and the old one exports
/// what it holds once its last request is done.
#[derive(Debug)]
pub struct Tracer {
    config: TelemetryConfig,
    queue: mpsc::Sender<export::Message>,
    dropped: AtomicU64,
}

impl Tracer {
    /// The tracer `config` asks for: `previous` when its config is the same, a new one when
    /// it differs, none without `otlp`. A tracer that cannot be built is logged and left
    /// out: tracing degrades, serving goes on.
    pub fn carry_or_build(config: &TelemetryConfig, previous: Option<&Arc<Tracer>>) -> Option<Arc<Tracer>> {
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return Some(Arc::clone(previous));
        }
        config.otlp.as_ref()?;
        match Tracer::start(config) {
            Ok(tracer) => Some(Arc::new(tracer)),
            Err(err) => {
                tracing::error!(error = %err, "tracing is off");
                None
            }
        }
    }

    /// Builds the exporter and spawns the export task on the current runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Tracer, TraceError> {
        let otlp = config
            .otlp
            .as_ref()
            .ok_or(TraceError::Exporter { endpoint: String::new(), detail: "no `telemetry.otlp` endpoint".into() })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
        let failed = |err: opentelemetry_otlp::ExporterBuildError| TraceError::Exporter {
            endpoint: otlp.endpoint.clone(),
            detail: err.to_string(),
        };
        // The exporters connect lazily (on the first batch), inside the runtime.
        let _entered = runtime.enter();
        let mut exporter = match otlp.protocol {
            OtlpProtocol::Grpc => SpanExporter::builder()
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(export::EXPORT_TIMEOUT)
                .build()
                .map_err(failed)?,
            OtlpProtocol::Http => SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(http_traces_url(&otlp.endpoint))
                .with_timeout(export::EXPORT_TIMEOUT)
                .build()
                .map_err(failed)?,
        };
        exporter.set_resource(&resource());
        let scope = InstrumentationScope::builder("weir").with_version(env!("CARGO_PKG_VERSION")).build();
        let (queue, receiver) = mpsc::channel(QUEUE);
        let worker = export::Worker {
            exporter,
            scope,
            capture_content: config.capture_content,
            endpoint: otlp.endpoint.clone(),
        };
        runtime.spawn(worker.run(receiver));
        tracing::info!(endpoint = %otlp.endpoint, protocol = ?otlp.protocol, sample_ratio = config.sample_ratio, "tracing on");
        Ok(Tracer { config: config.clone(), queue, dropped: AtomicU64::new(0) })
    }

    /// Queues the spans of a finished, sampled request.
    pub fn record(&self, exchange: &Exchange, outcome: Outcome) {
        let TraceContext::Local(ids) = exchange.trace else { return };
        if !ids.sampled {
            return;
        }
        let record = spans::SpanRecord::from_exchange(exchange, ids, outcome, self.config.capture_content);
        if self.queue.try_send(export::Message::Record(Box::new(record))).is_err() {
            // Counted and reported in powers of two, so a stuck exporter cannot flood the log.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "trace queue full; traces dropped (requests are not affected)");
            }
        }
    }

    /// Exports what is queued; gives up after `within`.
    pub async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        let flushed = async {
            if self.queue.send(export::Message::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!("trace export did not finish within {within:?} at shutdown");
        }
    }
}

/// Sets up tracing for a request that just arrived: its trace context and, when its spans
/// carry content, the full read-back of the answer.
pub fn begin(exchange: &mut Exchange, headers: &HeaderMap) {
    let tracer = exchange.snapshot.tracer.as_deref();
    exchange.trace = TraceContext::start(headers, tracer.map(|t| t.config.sample_ratio));
    if exchange.trace.sampled() && tracer.is_some_and(|t| t.config.capture_content) {
        exchange.wants_assembly = true;
    }
}

/// The process's resource: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` when set, else
/// `service.name=weir`.
fn resource() -> Resource {
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    let builder = Resource::builder();
    if named { builder.build() } else { builder.with_service_name("weir").build() }
}

/// `http://host:4318` → `http://host:4318/v1/traces`; a URL already naming the path is kept.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// The response model and finish reasons, read from a captured answer without assembling
/// it (for spans when nothing asked for the whole answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerSummary {
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

#[derive(Deserialize)]
struct SummaryShape {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChoiceShape>,
}

#[derive(Deserialize)]
struct ChoiceShape {
    #[serde(default)]
    index: usize,
    finish_reason: Option<String>,
}

impl AnswerSummary {
    /// Reads a JSON answer, or an SSE one's events (model from the first, each choice's
    /// last non-null finish reason).
    pub fn read(bytes: &[u8], sse: bool) -> AnswerSummary {
        if !sse {
            return match serde_json::from_slice::<SummaryShape>(bytes) {
                Ok(shape) => AnswerSummary {
                    model: shape.model,
                    finish_reasons: shape.choices.into_iter().filter_map(|c| c.finish_reason).collect(),
                },
                Err(_) => AnswerSummary::default(),
            };
        }
        let mut summary = AnswerSummary::default();
        let mut reasons: Vec<Option<String>> = Vec::new();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:").map(str::trim_start) else { continue };
            let wanted = summary.model.is_none() || data.contains("\"finish_reason\":\"");
            if !wanted || data == "[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<SummaryShape>(data) else { continue };
            if summary.model.is_none() {
                summary.model = chunk.model;
            }
            for choice in chunk.choices {
                if let Some(reason) = choice.finish_reason {
                    if reasons.len() <= choice.index && choice.index < 128 {
                        reasons.resize(choice.index + 1, None);
                    }
                    if let Some(slot) = reasons.get_mut(choice.index) {
                        *slot = Some(reason);
                    }
                }
            }
        }
        summary.finish_reasons = reasons.into_iter().flatten().collect();
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoint_gets_the_traces_path_once() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }

    #[test]
    fn summary_of_json_and_sse_answers() {
        let json =
            br#"{"id":"x","model":"gpt-x","choices":[{"index":0,"finish_reason":"stop","message":{"content":"hi"}}]}"#;
        assert_eq!(
            AnswerSummary::read(json, false),
            AnswerSummary { model: Some("gpt-x".into()), finish_reasons: vec!["stop".into()] }
        );
        let sse = b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(
            AnswerSummary::read(sse, true),
            AnswerSummary { model: Some("m".into()), finish_reasons: vec!["stop".into(), "length".into()] }
        );
    }
}
