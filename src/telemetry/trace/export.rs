//! The export task: span records in through a bounded queue, OTLP batches out.
//!
//! Owns: batching (by count, size and time), the export timeout, and what happens when the
//! collector is slow or down: batches are dropped with a (rate-limited) warning.
//! Must not: be waited on by a request: the queue is fed with `try_send` only.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::spans::SpanRecord;

/// Spans per export call.
const MAX_BATCH: usize = 512;
/// Rough bytes per export call: collectors commonly refuse gRPC messages over 4 MiB.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// A partial batch waits at most this long.
const INTERVAL: Duration = Duration::from_secs(1);
/// One export call may take this long before its batch is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Warnings about a failing collector come at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub enum Message {
    Record(Box<SpanRecord>),
    /// Export what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

pub struct Worker {
    pub exporter: SpanExporter,
    pub scope: InstrumentationScope,
    pub capture_content: bool,
    pub endpoint: String,
}

struct Batch {
    spans: Vec<SpanData>,
    bytes: usize,
    last_warning: Option<Instant>,
    failed_spans: u64,
}

impl Worker {
    /// Runs until every sender is gone, exporting what is left before returning.
    pub async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let mut batch = Batch { spans: Vec::new(), bytes: 0, last_warning: None, failed_spans: 0 };
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = queue.recv() => match message {
                    Some(Message::Record(record)) => {
                        batch.bytes += record.approx_size();
                        batch.spans.extend(record.into_spans(&self.scope, self.capture_content));
                        if batch.spans.len() >= MAX_BATCH || batch.bytes >= MAX_BATCH_BYTES {
                            self.export(&mut batch).await;
                        }
                    }
                    Some(Message::Flush(done)) => {
                        self.export(&mut batch).await;
                        let _ = done.send(());
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    async fn export(&self, batch: &mut Batch) {
        if batch.spans.is_empty() {
            return;
        }
        let spans = std::mem::take(&mut batch.spans);
        batch.bytes = 0;
        let count = spans.len() as u64;
        let error = match tokio::time::timeout(EXPORT_TIMEOUT, self.exporter.export(spans)).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err.to_string(),
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
}
