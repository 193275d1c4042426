//! Traces: one server span per request and a client span per upstream attempt, exported
//! over OTLP (gRPC or HTTP/protobuf) by a task of their own.
//!
//! Owns: the [`Tracer`] (config, export queue) and the span contents ([`spans`]), built from
//! a request's finished [`Record`] (its trace ids and sampling come from
//! `wire::trace_context`, decided when the request arrived).
//! Must not: slow a request. When a request finishes, plain data is copied into a bounded
//! queue (`try_send`: a full queue drops the trace). Spans are built and exported on the export task; its failure degrades
//! tracing, never requests.
//!
//! Why not the SDK's `Tracer`: it draws span ids when a span starts, but weir must put the
//! attempt's span id into the upstream `traceparent` before the span exists, and builds
//! spans after the fact with exact start and end times. So spans are `SpanData` made here
//! and handed to `opentelemetry-otlp`'s exporter directly.

mod export;
mod spans;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, oneshot};

use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::wire::{Record, TraceContext};

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

    /// The share of new traces sampled, for the trace context of arriving requests.
    pub fn sample_ratio(&self) -> f64 {
        self.config.sample_ratio
    }

    /// Whether spans carry prompts and completions (the request path then reads the whole
    /// answer back for sampled requests).
    pub fn captures_content(&self) -> bool {
        self.config.capture_content
    }

    /// Queues the spans of a finished, sampled request.
    pub fn record(&self, request: &Record) {
        let TraceContext::Local(ids) = request.trace else { return };
        if !ids.sampled {
            return;
        }
        let record = spans::SpanRecord::from_record(request, ids, self.config.capture_content);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoint_gets_the_traces_path_once() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
    }
}
