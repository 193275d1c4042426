//! The export task: span records in through a bounded queue, OTLP batches out.
//!
//! Owns: encoding each record's spans into the batch as it arrives (`spans`, `proto`),
//! batching (by span count, bytes and time), the OTLP request around a batch, the two
//! transports (HTTP/protobuf `POST /v1/traces`; gRPC `TraceService/Export` over HTTP/2),
//! the export timeout, and what happens when the collector is slow or down: batches are
//! dropped with a (rate-limited) warning.
//! Must not: be waited on by a request: the queue is fed with `try_send` only.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::proto;
use super::spans::SpanRecord;
use crate::backends::{HttpClient, error_chain};

/// Spans per export call.
const MAX_BATCH: usize = 512;
/// Bytes per export call: collectors commonly refuse gRPC messages over 4 MiB.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// A partial batch waits at most this long.
const INTERVAL: Duration = Duration::from_secs(1);
/// After taking what is queued, the task waits this long before taking more. At 40,000
/// requests/s that is 800 records, a tenth of the queue.
const GATHER: Duration = Duration::from_millis(20);
/// Messages taken from the queue at a time.
const INBOX: usize = 256;
/// One export call may take this long before its batch is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Warnings about a failing collector come at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Most of a collector's answer read (it is a small status message).
const ANSWER_LIMIT: usize = 64 * 1024;
/// A gRPC message's frame head: a compression flag and a big-endian length.
const GRPC_FRAME_HEAD: usize = 5;
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest.resource_spans`, `ResourceSpans.resource` / `.scope_spans`,
/// `ScopeSpans.scope`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const SCOPE_SPANS_SCOPE: u32 = 1;

pub enum Message {
    Record(Box<SpanRecord>),
    /// Export what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// How batches reach the collector.
pub enum Transport {
    /// OTLP/HTTP with a protobuf body, to the full `/v1/traces` URL.
    Http { client: HttpClient, url: Uri },
    /// OTLP/gRPC, unary `Export`, to the `TraceService/Export` URL.
    Grpc { client: HttpClient, url: Uri },
}

pub struct Worker {
    pub transport: Transport,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: HeaderMap,
    /// The encoded `Resource` and `InstrumentationScope` messages every batch carries.
    pub resource: Vec<u8>,
    pub scope: Vec<u8>,
    pub capture_content: bool,
    pub endpoint: String,
}

struct Batch {
    /// Encoded `ScopeSpans.spans` entries.
    spans: Vec<u8>,
    count: usize,
    last_warning: Option<Instant>,
    failed_spans: u64,
}

impl Worker {
    /// Runs until every sender is gone, exporting what is left before returning.
    pub async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let mut batch = Batch { spans: Vec::new(), count: 0, last_warning: None, failed_spans: 0 };
        let mut inbox = Vec::with_capacity(INBOX);
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut inbox, INBOX) => {
                    if received == 0 {
                        self.export(&mut batch).await;
                        return;
                    }
                    for message in inbox.drain(..) {
                        self.take(message, &mut batch).await;
                    }
                    // The queue is empty: let records gather instead of being woken by each
                    // one (a wake-up per request costs each request a cross-thread hand-off).
                    if received < INBOX {
                        tokio::time::sleep(GATHER).await;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    async fn take(&self, message: Message, batch: &mut Batch) {
        match message {
            Message::Record(record) => {
                record.encode(&mut batch.spans, self.capture_content);
                batch.count += record.span_count();
                if batch.count >= MAX_BATCH || batch.spans.len() >= MAX_BATCH_BYTES {
                    self.export(batch).await;
                }
            }
            Message::Flush(done) => {
                self.export(batch).await;
                let _ = done.send(());
            }
        }
    }

    async fn export(&self, batch: &mut Batch) {
        if batch.count == 0 {
            return;
        }
        let body = self.request(&batch.spans);
        batch.spans.clear();
        let count = std::mem::take(&mut batch.count) as u64;
        let error = match tokio::time::timeout(EXPORT_TIMEOUT, self.send(body)).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err,
            Err(_) => format!("no answer within {EXPORT_TIMEOUT:?}"),
        };
        batch.failed_spans += count;
        let now = Instant::now();
        if batch.last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            batch.last_warning = Some(now);
            tracing::warn!(
                endpoint = %self.endpoint, error = %error, dropped_spans = batch.failed_spans,
                "trace export failed; spans dropped (requests are not affected)"
            );
            batch.failed_spans = 0;
        }
    }

    /// The request body: one `ResourceSpans` with one `ScopeSpans` holding `spans`, after
    /// room for a gRPC frame head when the transport needs one.
    fn request(&self, spans: &[u8]) -> Bytes {
        let scope_spans = proto::field_len(self.scope.len()) + spans.len();
        let resource_spans = proto::field_len(self.resource.len()) + proto::field_len(scope_spans);
        let message = proto::field_len(resource_spans);
        let frame_head = if matches!(self.transport, Transport::Grpc { .. }) { GRPC_FRAME_HEAD } else { 0 };
        let mut out = Vec::with_capacity(frame_head + message);
        if frame_head > 0 {
            out.push(0); // not compressed
            out.extend_from_slice(&u32::try_from(message).unwrap_or(u32::MAX).to_be_bytes());
        }
        proto::message_head(&mut out, REQUEST_RESOURCE_SPANS, resource_spans);
        proto::bytes(&mut out, RESOURCE_SPANS_RESOURCE, &self.resource);
        proto::message_head(&mut out, RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        proto::bytes(&mut out, SCOPE_SPANS_SCOPE, &self.scope);
        out.extend_from_slice(spans);
        Bytes::from(out)
    }

    async fn send(&self, body: Bytes) -> Result<(), String> {
        let (client, url, content_type) = match &self.transport {
            Transport::Http { client, url } => (client, url, "application/x-protobuf"),
            Transport::Grpc { client, url } => (client, url, "application/grpc"),
        };
        let mut request = Request::builder().method(Method::POST).uri(url.clone());
        if let Some(headers) = request.headers_mut() {
            headers.extend(self.headers.clone());
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            if matches!(self.transport, Transport::Grpc { .. }) {
                headers.insert("te", HeaderValue::from_static("trailers"));
            }
        }
        let request = request.body(Full::new(body)).map_err(|err| err.to_string())?;
        let response = client.request(request).await.map_err(|err| error_chain(&err))?;
        let status = response.status();
        let head = response.headers().clone();
        let answer = Limited::new(response.into_body(), ANSWER_LIMIT).collect().await.map_err(|err| err.to_string())?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&answer.to_bytes()).chars().take(200).collect::<String>();
            return Err(format!("HTTP {status}: {text}"));
        }
        if matches!(self.transport, Transport::Grpc { .. }) {
            // A gRPC status comes in the trailers, or in the head of a trailers-only answer.
            let trailers = answer.trailers().cloned().unwrap_or_default();
            return grpc_status(&trailers).or_else(|| grpc_status(&head)).unwrap_or(Err("no grpc-status".into()));
        }
        Ok(())
    }
}

/// `Some(Ok)` for `grpc-status: 0`, `Some(Err)` with the message for another status.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let status = headers.get("grpc-status")?.to_str().unwrap_or("?");
    if status == "0" {
        return Some(Ok(()));
    }
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
    Some(Err(format!("gRPC status {status}: {message}")))
}
