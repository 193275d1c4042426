//! One request in flight on the request path: its [`Record`], the guards it holds, and the
//! one place it ends.
//!
//! Owns: [`Exchange`], created when a request arrives and finished exactly once: when the
//! response body ends, when it fails, or — through `Drop` — when the client goes away. The
//! guards ([`Guards`]: the key's admission, the target's in-flight place, the cache fill)
//! are released here, and every tap gets the same finished, plain record, so no request
//! escapes them however it ends.
//! Must not: block. Order in [`Exchange::finish`]: release the target, read the captured
//! answer back (usage, assembly), price it, then hand the record to each tap; anything slow
//! is queued by the tap to a task of its own.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use crate::cache::Fill;
use crate::datasets::Selection;
use crate::limits::Admission;
use crate::router::InFlight;
use crate::runtime::Snapshot;
use crate::telemetry::trace::Tracer;
use crate::wire::{
    AnswerSummary, Assembled, CAPTURE_LIMIT, CacheStatus, Capture, Endpoint, Outcome, Record, TraceContext,
};

/// What a request holds that must be given back when it ends, whatever the way.
#[derive(Debug, Default)]
pub struct Guards {
    /// The key's limits reservation, settled with what the request used.
    pub admission: Option<Admission>,
    /// The answering target's in-flight place (least-loaded choice, health); a stream that
    /// broke counts against the target.
    pub target: Option<InFlight>,
    /// The cache's fill of this request's answer (and the flight it leads).
    pub fill: Option<Fill>,
}

#[derive(Debug)]
pub struct Exchange {
    /// The config this request runs on, from arrival to the last tap.
    snapshot: Arc<Snapshot>,
    pub record: Record,
    /// The answer as it streamed by, bounded by `CAPTURE_LIMIT`.
    pub capture: Option<Capture>,
    /// Set when a tap needs the whole answer (cache fill, datasets, content on spans);
    /// otherwise only the usage is read back, which is cheaper.
    pub wants_assembly: bool,
    /// The datasets that record this request, chosen when its answer starts (so the capture
    /// knows whether to keep the whole answer).
    datasets: Option<Selection>,
    /// Who may send feedback for this request (`KeyTable::owner`), once authenticated and
    /// when a dataset or an experiment could take that feedback.
    pub owner: Option<String>,
    pub guards: Guards,
    /// A Responses answer from a backend that speaks the API natively, stored once read
    /// back (converted answers are stored by their converter).
    pub store: Option<super::inbound::StoreJob>,
    finished: bool,
}

impl Exchange {
    /// A request that just arrived: its trace context is decided, and its id remembered for
    /// feedback.
    pub fn begin(
        snapshot: Arc<Snapshot>,
        request_id: String,
        started: Instant,
        endpoint: Endpoint,
        headers: &HeaderMap,
    ) -> Exchange {
        let mut record = Record::new(request_id, started);
        record.endpoint = Some(endpoint);
        let tracer = snapshot.tracer.as_deref();
        record.trace = TraceContext::start(headers, tracer.map(Tracer::sample_ratio));
        let wants_assembly = record.trace.sampled() && tracer.is_some_and(Tracer::captures_content);
        Exchange {
            snapshot,
            record,
            capture: None,
            wants_assembly,
            datasets: None,
            owner: None,
            guards: Guards::default(),
            store: None,
            finished: false,
        }
    }

    /// Names the backend that answers (a cached answer's origin).
    pub fn set_backend(&mut self, backend: String, variant: String) {
        self.record.provider = self.snapshot.backends.get(&backend).map(|b| b.config.kind.genai_provider());
        self.record.backend = backend;
        self.record.variant = variant;
    }

    /// The answer's headers are going out: an experiment scored by feedback remembers who
    /// answered, so feedback may follow at once.
    pub fn answering(&self) {
        self.snapshot.experiments.answering(&self.record, self.owner.as_deref());
    }

    /// Sets up the capture of an answer about to be sent (status, backend and shape known):
    /// its exact bytes when a tap needs them, a stream folded into its answer when the taps
    /// need only that, else only its usage; nothing for a cache hit no tap reads.
    pub fn start_capture(&mut self) {
        let datasets = self.snapshot.datasets.select(&self.record, self.owner.as_deref());
        // The inbound APIs are read back from their own events (usage is in the closing one).
        let inbound = self.record.endpoint.is_some_and(Endpoint::is_inbound);
        let reads_answer = self.wants_assembly || !datasets.is_empty() || self.record.trace.sampled();
        self.datasets = Some(datasets);
        if self.record.cache == CacheStatus::Hit && !reads_answer && !inbound {
            // A hit spent no tokens (its usage is not counted again), and no tap reads it.
            return;
        }
        let sse = self.record.sse;
        self.capture = Some(if inbound || (reads_answer && !sse) {
            Capture::whole(CAPTURE_LIMIT)
        } else if reads_answer {
            Capture::assembling(CAPTURE_LIMIT)
        } else {
            Capture::usage_only(sse, CAPTURE_LIMIT)
        });
    }

    /// The tap on every body chunk sent to the client: TTFT, byte count, capture.
    pub fn observe_chunk(&mut self, chunk: &Bytes) {
        let record = &mut self.record;
        if record.first_byte.is_none() {
            record.first_byte = Some(record.started.elapsed());
        }
        record.bytes_out += chunk.len() as u64;
        if let Some(capture) = &mut self.capture {
            capture.push(chunk);
        }
        if let Some(fill) = &self.guards.fill {
            fill.observe(chunk, &self.record);
        }
    }

    pub fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.record.duration = self.record.started.elapsed();
        self.record.outcome = outcome;
        if let Some(target) = self.guards.target.take() {
            target.finish(outcome == Outcome::Failed);
        }
        let cache_answer =
            self.guards.fill.as_ref().and_then(|fill| fill.raw_answer(&self.record, self.capture.as_ref()));
        let snapshot = Arc::clone(&self.snapshot);
        // Decided before reading back, so only recorded requests pay for assembly.
        let datasets =
            self.datasets.take().unwrap_or_else(|| snapshot.datasets.select(&self.record, self.owner.as_deref()));
        self.wants_assembly |= !datasets.is_empty();
        self.read_back();
        if let (Some(job), Some(answer)) = (self.store.take(), self.record.assembled.as_ref()) {
            job.store(serde_json::Value::clone(&answer.body));
        }
        let record = &self.record;
        snapshot.metrics.record_request(record);
        if let Some(fill) = self.guards.fill.take() {
            fill.complete(record, cache_answer);
        }
        if let Some(tracer) = &snapshot.tracer {
            tracer.record(record);
        }
        snapshot.limits.finish(record, self.guards.admission.take());
        snapshot.datasets.record(record, datasets);
        snapshot.experiments.observe(record);
        crate::telemetry::access::log(record);
    }

    /// Reads usage (and the whole answer, when a tap asked) out of the capture, and prices
    /// it with the model's `price`.
    fn read_back(&mut self) {
        let Some(capture) = self.capture.take() else { return };
        let record = &mut self.record;
        if let Some(endpoint) = record.endpoint.filter(|e| e.is_inbound()) {
            // The client's own API, read with its own usage fields (cached tokens included).
            let complete = record.outcome == Outcome::Completed && (200..300).contains(&record.status);
            record.assembled = capture
                .as_slice()
                .filter(|_| complete)
                .and_then(|bytes| read_inbound(endpoint, bytes, record.sse))
                .map(Arc::new);
            record.usage = record.assembled.as_ref().and_then(|a| a.usage);
        } else if self.wants_assembly && record.outcome == Outcome::Completed && (200..300).contains(&record.status) {
            let overflowed = capture.overflowed();
            record.assembled = capture.assemble(record.sse).map(Arc::new);
            record.usage = record.assembled.as_ref().and_then(|a| a.usage);
            if record.assembled.is_none() && record.error.is_none() {
                // Relayed as the upstream sent it, but recorded for what it is.
                record.error = Some(unreadable_answer(record.sse, overflowed));
            }
        } else {
            record.usage = capture.usage(record.sse);
            if record.trace.sampled() {
                record.answer_summary = capture.summary(record.sse);
            }
        }
        if record.cache == CacheStatus::Hit {
            // A hit spent no tokens: the stored answer's usage is what its first request paid.
            record.usage = None;
            return;
        }
        let price = self.snapshot.models.get(&record.model).and_then(|route| route.config.price);
        if let (Some(usage), Some(price)) = (record.usage, price) {
            record.cost_usd = Some(price.cost(&usage));
        }
    }
}

/// Why a successful answer that a tap wanted read back has no answer in the record.
fn unreadable_answer(sse: bool, overflowed: bool) -> String {
    match (overflowed, sse) {
        (true, _) => format!("the answer was longer than the {CAPTURE_LIMIT} bytes kept for reading it back"),
        (false, true) => "the upstream's stream held no readable chat completion chunk".to_owned(),
        (false, false) => "the upstream's answer is not JSON".to_owned(),
    }
}

/// A Responses or Messages answer (JSON or stream) read back in the chat-neutral shape the
/// taps take: the API's own object as the body, its usage, its stop reason.
fn read_inbound(endpoint: Endpoint, bytes: &[u8], sse: bool) -> Option<Assembled> {
    let (body, usage, reason, model) = match endpoint {
        Endpoint::Responses => {
            let answer = crate::apis::responses::read_answer(bytes, sse)?;
            (answer.body, answer.usage, Some(answer.status), answer.model)
        }
        Endpoint::Messages => {
            let answer = crate::apis::messages::read_answer(bytes, sse)?;
            (answer.body, answer.usage, answer.stop_reason, answer.model)
        }
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => return None,
    };
    let summary = AnswerSummary { model, finish_reasons: reason.into_iter().collect() };
    Some(Assembled::new(body.into(), usage.map(crate::apis::usage::Tokens::to_wire), summary, true))
}
impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(Outcome::ClientGone);
    }
}
