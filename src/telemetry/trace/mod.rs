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
//! Why not the SDK's `Tracer` and exporter: the SDK draws span ids when a span starts, but
//! weir must put the attempt's span id into the upstream `traceparent` before the span
//! exists, and builds spans after the fact with exact start and end times. And building
//! `SpanData` only for the exporter to turn it into prost messages cost about 12% of weir's
//! CPU with every request traced. So spans are encoded here as OTLP protobuf, straight from
//! the record (`proto`), and sent by the export task's own HTTP or gRPC request (`export`).
//! The SDK is used only to read the resource from the environment.

mod export;
mod proto;
mod spans;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use opentelemetry::Value;
use opentelemetry_sdk::Resource;
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
        let failed = |detail: String| TraceError::Exporter { endpoint: otlp.endpoint.clone(), detail };
        let transport = match otlp.protocol {
            OtlpProtocol::Grpc => export::Transport::Grpc {
                client: crate::backends::build_h2_client(export::EXPORT_TIMEOUT).map_err(|e| failed(e.to_string()))?,
                url: export_url(&otlp.endpoint, export::GRPC_PATH).map_err(failed)?,
            },
            OtlpProtocol::Http => export::Transport::Http {
                client: crate::backends::build_client(export::EXPORT_TIMEOUT, None)
                    .map_err(|e| failed(e.to_string()))?,
                url: export_url(&otlp.endpoint, "/v1/traces").map_err(failed)?,
            },
        };
        let (queue, receiver) = mpsc::channel(QUEUE);
        let worker = export::Worker {
            transport,
            headers: headers_from_env(),
            resource: encode_resource(&resource()),
            scope: encode_scope(),
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

/// The resource as an encoded `Resource` message.
fn encode_resource(resource: &Resource) -> Vec<u8> {
    const RESOURCE_ATTRIBUTES: u32 = 1;
    let mut out = Vec::new();
    let mut attributes = proto::Attributes::new(&mut out, RESOURCE_ATTRIBUTES);
    for (key, value) in resource.iter() {
        match value {
            Value::Bool(b) => attributes.boolean(key.as_str(), *b),
            Value::I64(i) => attributes.int(key.as_str(), *i),
            Value::F64(f) => attributes.float(key.as_str(), *f),
            other => attributes.str(key.as_str(), other.as_str().as_ref()),
        }
    }
    out
}

/// weir's `InstrumentationScope` message: its name and version.
fn encode_scope() -> Vec<u8> {
    let mut out = Vec::new();
    proto::string(&mut out, 1, "weir");
    proto::string(&mut out, 2, env!("CARGO_PKG_VERSION"));
    out
}

/// Headers for every export, from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or else
/// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key2=value2`, values percent-encoded), as the
/// OpenTelemetry SDKs read them: a collector's API key, for one.
fn headers_from_env() -> HeaderMap {
    let text = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
        .unwrap_or_default();
    parse_headers(&text)
}

fn parse_headers(text: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let parsed = pair.split_once('=').and_then(|(name, value)| {
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8().ok()?;
            Some((HeaderName::try_from(name.trim()).ok()?, HeaderValue::try_from(value.as_ref()).ok()?))
        });
        match parsed {
            Some((name, value)) => drop(headers.append(name, value)),
            None => tracing::warn!(
                entry = pair.split('=').next().unwrap_or(""),
                "OTLP header entry ignored: not `name=value`"
            ),
        }
    }
    headers
}

/// The export URL: the endpoint with `path` appended, unless it already ends with it
/// (`http://host:4318` → `http://host:4318/v1/traces`).
fn export_url(endpoint: &str, path: &str) -> Result<Uri, String> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with(path) { base.to_owned() } else { format!("{base}{path}") };
    url.parse::<Uri>().map_err(|err| format!("not a URL: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_urls_get_their_path_once() {
        let url = |endpoint, path| export_url(endpoint, path).unwrap().to_string();
        assert_eq!(url("http://c:4318", "/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/v1/traces", "/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(url("https://c:4317/", export::GRPC_PATH), format!("https://c:4317{}", export::GRPC_PATH));
        assert!(export_url("not a url", "/v1/traces").is_err());
    }

    #[test]
    fn otlp_headers_are_name_value_pairs_with_percent_encoded_values() {
        let headers = parse_headers("api-key=abc%3D%3D, x-team = ml ,broken,=x");
        assert_eq!(headers.get("api-key").unwrap(), "abc==");
        assert_eq!(headers.get("x-team").unwrap(), "ml");
        assert_eq!(headers.len(), 2);
    }
}
