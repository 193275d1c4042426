//! The response body: upstream chunks passed to the client as they arrive.
//!
//! [`ProxyBody`] adds what the upstream body lacks: the `idle` and `total` timeouts, the
//! end of a failed SSE stream as one `data: {"error": ...}` event (never a made-up finish),
//! the backend's in-flight place held until the last byte, and the [`Exchange`] finished
//! when the body ends or is dropped. It looks at each chunk without copying or delaying it.
//! An answer whose length is known ends with its last byte: hyper may drop such a body once
//! that byte is out without polling it again, and the request still completed; likewise a
//! stream whose `data: [DONE]` reached the client completed, whenever its client hangs up.
//! When weir asked upstream for a stream's usage on the client's behalf, the usage-only
//! chunk is taken out after the capture has seen it ([`UsageChunkFilter`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::Exchange;
use super::inbound::StoreJob;
use super::sse_filter::UsageChunkFilter;
use crate::apis::StreamError;
use crate::apis::convert::Converter;
use crate::backends::{InflightPermit, TimeoutPhase, UpstreamBody};
use crate::cache::{Origin, finish_for_followers};
use crate::wire::Outcome;

/// Error type of a response body that had to be cut (non-SSE only; SSE ends with an event).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyCut(String);

pub struct ProxyBody {
    upstream: UpstreamBody,
    sse: bool,
    idle: Duration,
    deadline: Instant,
    /// When the last chunk arrived; the idle limit counts from here.
    last_chunk: Instant,
    /// Armed for the earliest limit that may have passed; re-armed lazily when it fires,
    /// so a busy stream costs no timer-wheel update per chunk.
    /// Created only when the upstream first makes us wait: a body that is already there
    /// (most JSON answers) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    /// Kept only to be released when the body is done.
    _permit: Option<InflightPermit>,
    exchange: Exchange,
    /// Set only when weir injected `include_usage`; the usual path never touches it.
    usage_filter: Option<Box<UsageChunkFilter>>,
    /// The upstream ended; only the filter's leftover may still be sent.
    upstream_ended: bool,
    /// Bytes still to come of an answer whose length is known.
    remaining: Option<u64>,
    /// The tail of what the client was sent, to see a stream's `data: [DONE]` go by.
    tail: Tail,
    done: bool,
    /// Set for a Responses or Messages request answered by a chat backend.
    inbound: Option<Box<InboundConversion>>,
}

/// The conversion of a chat answer for the client's API, and the store of its result.
struct InboundConversion {
    converter: Converter,
    store: Option<StoreJob>,
}

/// The last bytes sent, enough to hold `data: [DONE]` and its blank line.
#[derive(Debug, Default)]
struct Tail {
    bytes: [u8; 16],
    len: usize,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let keep = chunk.len().min(self.bytes.len());
        let from_old = (self.bytes.len() - keep).min(self.len);
        self.bytes.copy_within(self.len - from_old..self.len, 0);
        self.bytes[from_old..from_old + keep].copy_from_slice(&chunk[chunk.len() - keep..]);
        self.len = from_old + keep;
    }

    /// Whether the stream sent so far ends with its `[DONE]` event.
    fn ends_stream(&self) -> bool {
        let tail = &self.bytes[..self.len];
        tail.ends_with(b"data: [DONE]\n\n")
            || tail.ends_with(b"data: [DONE]\r\n\r\n")
            || tail.ends_with(b"data:[DONE]\n\n")
    }
}

impl ProxyBody {
    pub fn new(
        upstream: UpstreamBody,
        sse: bool,
        idle: Duration,
        deadline: Instant,
        permit: Option<InflightPermit>,
        exchange: Exchange,
    ) -> ProxyBody {
        let now = Instant::now();
        let timer = None;
        let remaining = match &upstream {
            _ if sse => None,
            UpstreamBody::Full(Some(bytes)) => Some(bytes.len() as u64),
            UpstreamBody::Http(incoming) => http_body::Body::size_hint(incoming).exact(),
            _ => None,
        };
        ProxyBody {
            upstream,
            sse,
            idle,
            deadline,
            last_chunk: now,
            timer,
            _permit: permit,
            exchange,
            usage_filter: None,
            upstream_ended: false,
            remaining,
            tail: Tail::default(),
            done: false,
            inbound: None,
        }
    }

    /// Converts the answer for the client's API (Responses or Messages) before anything
    /// downstream (the capture, the client) sees it; `store` keeps a completed response.
    pub fn convert(mut self, converter: Converter, store: Option<StoreJob>) -> ProxyBody {
        self.sse = converter.is_stream();
        self.inbound = Some(Box::new(InboundConversion { converter, store }));
        self
    }

    /// Runs upstream bytes (or the upstream's end, `None`) through the conversion. `Err`
    /// carries the client's last bytes (its error event) and why the answer failed.
    fn converted(&mut self, chunk: Option<&[u8]>) -> Result<Bytes, (Bytes, String)> {
        let Some(inbound) = self.inbound.as_mut() else {
            return Ok(chunk.map(Bytes::copy_from_slice).unwrap_or_default());
        };
        let mut out = Vec::new();
        let result = match chunk {
            Some(chunk) => inbound.converter.push(chunk, &mut out),
            None => inbound.converter.finish(&mut out),
        };
        if let Some(response) = inbound.converter.take_final()
            && let Some(store) = inbound.store.take()
        {
            store.store(response);
        }
        match result {
            Ok(()) => Ok(Bytes::from(out)),
            Err(err) => Err((Bytes::from(out), err.to_string())),
        }
    }

    /// Takes the usage-only chunk out of what the client receives (the capture still sees it).
    pub fn strip_usage_chunk(mut self) -> ProxyBody {
        self.usage_filter = Some(Box::default());
        self
    }

    /// Notes a chunk handed to the client; the last byte of a known length ends the request.
    fn sent(&mut self, chunk: &Bytes) {
        if self.sse {
            self.tail.push(chunk);
        }
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(chunk.len() as u64);
            if *remaining == 0 {
                self.done = true;
                self.exchange.finish(Outcome::Completed);
            }
        }
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        self.done = true;
        self.exchange.finish(Outcome::Completed);
        Poll::Ready(None)
    }

    /// Ends the body after an upstream failure: an SSE error event for streams, a cut
    /// connection for anything else (a truncated JSON body must not look complete).
    fn fail(&mut self, code: &str, message: String) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        self.done = true;
        self.exchange.record.error = Some(message.clone());
        if let Some(inbound) = self.inbound.as_mut().filter(|_| self.sse) {
            // The client's API has its own error event.
            let mut out = Vec::new();
            let err = StreamError::Upstream { code: Some(code.to_owned()), message };
            inbound.converter.fail(&err, &mut out);
            let out = Bytes::from(out);
            self.exchange.observe_chunk(&out);
            self.exchange.finish(Outcome::Failed);
            return Poll::Ready(Some(Ok(Frame::data(out))));
        }
        self.exchange.finish(Outcome::Failed);
        if !self.sse {
            return Poll::Ready(Some(Err(BodyCut(message))));
        }
        let event =
            serde_json::json!({"error": {"message": message, "type": "api_error", "code": code, "param": null}});
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("data: {event}\n\n"))))))
    }
}

impl ProxyBody {
    /// The client's frame for converted upstream bytes (or the upstream's end).
    fn converted_frame(
        &mut self,
        chunk: Option<&[u8]>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let ended = chunk.is_none();
        match self.converted(chunk) {
            Ok(out) if out.is_empty() && ended => self.end(),
            Ok(out) if out.is_empty() => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Ok(out) => {
                self.exchange.observe_chunk(&out);
                self.upstream_ended = ended;
                Poll::Ready(Some(Ok(Frame::data(out))))
            }
            Err((out, message)) => {
                self.done = true;
                let message = format!(
                    "backend `{}` answered what weir cannot translate: {message}",
                    self.exchange.record.backend
                );
                self.exchange.record.error = Some(message.clone());
                if out.is_empty() {
                    self.exchange.finish(Outcome::Failed);
                    return Poll::Ready(Some(Err(BodyCut(message))));
                }
                self.exchange.observe_chunk(&out);
                self.exchange.finish(Outcome::Failed);
                Poll::Ready(Some(Ok(Frame::data(out))))
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.upstream_ended {
            return this.end();
        }
        match this.upstream.poll_chunk(cx) {
            Poll::Ready(Some(Ok(chunk))) if this.inbound.is_some() => {
                this.last_chunk = Instant::now();
                this.converted_frame(Some(&chunk), cx)
            }
            Poll::Ready(None) if this.inbound.is_some() => this.converted_frame(None, cx),
            Poll::Ready(Some(Ok(chunk))) => {
                this.exchange.observe_chunk(&chunk);
                this.last_chunk = Instant::now();
                let chunk = match &mut this.usage_filter {
                    Some(filter) => match filter.filter(chunk) {
                        Ok(chunk) => chunk,
                        Err(too_long) => {
                            let message = format!("backend `{}` sent {too_long}", this.exchange.record.backend);
                            return this.fail("upstream_error", message);
                        }
                    },
                    None => chunk,
                };
                if chunk.is_empty() {
                    // Nothing for the client in this one: ask for the next chunk at once.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                this.sent(&chunk);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => {
                let message = format!("backend `{}` failed mid-response: {err}", this.exchange.record.backend);
                this.fail("upstream_error", message)
            }
            Poll::Ready(None) => {
                let rest = this.usage_filter.as_mut().map(|filter| filter.finish()).unwrap_or_default();
                if rest.is_empty() {
                    return this.end();
                }
                this.upstream_ended = true;
                this.sent(&rest);
                Poll::Ready(Some(Ok(Frame::data(rest))))
            }
            Poll::Pending => {
                let next_limit = (this.last_chunk + this.idle).min(this.deadline);
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next_limit)));
                // The timer fires for a limit computed earlier; chunks may have come since.
                while timer.as_mut().poll(cx).is_ready() {
                    let Some(phase) = timed_out(Instant::now(), this.deadline, this.last_chunk + this.idle) else {
                        timer.as_mut().reset((this.last_chunk + this.idle).min(this.deadline));
                        continue;
                    };
                    let limit = if phase == TimeoutPhase::Total { "total" } else { "idle" };
                    let message =
                        format!("backend `{}` timed out mid-response ({limit} timeout)", this.exchange.record.backend);
                    return this.fail("upstream_timeout", message);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.inbound.is_some() {
            return SizeHint::default();
        }
        match &self.upstream {
            UpstreamBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            UpstreamBody::Http(incoming) if !self.sse => incoming.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.sse && self.tail.ends_stream() {
            // The whole stream reached the client, which hung up before we saw the upstream's
            // end (SDKs close right after `[DONE]`).
            self.exchange.finish(Outcome::Completed);
            return;
        }
        // The client left mid-stream; identical requests reading this stream through the
        // cache get the rest of it instead of a cut.
        // A converted answer cannot be handed on unconverted: its followers fail instead.
        let convertible = self.inbound.is_none();
        if let Some(fill) = self.exchange.guards.fill.take_if(|fill| convertible && fill.has_stream_followers()) {
            let mut upstream = std::mem::replace(&mut self.upstream, UpstreamBody::Full(None));
            let record = &self.exchange.record;
            let origin = Origin { backend: record.backend.clone(), variant: record.variant.clone() };
            let chunks = futures_util::stream::poll_fn(move |cx| upstream.poll_chunk(cx));
            finish_for_followers(fill, chunks, self.idle, self.deadline, self._permit.take(), origin);
        }
    }
}

/// Which limit has passed, if any, at `now`.
fn timed_out(now: Instant, deadline: Instant, idle_limit: Instant) -> Option<TimeoutPhase> {
    if now >= deadline {
        Some(TimeoutPhase::Total)
    } else if now >= idle_limit {
        Some(TimeoutPhase::Idle)
    } else {
        None
    }
}
