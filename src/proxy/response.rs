//! The response body: upstream chunks passed to the client as they arrive.
//!
//! [`ProxyBody`] adds what the upstream body lacks: the `idle` and `total` timeouts, the
//! end of a failed SSE stream as one `data: {"error": ...}` event (never a made-up finish),
//! the backend's in-flight place held until the last byte, and the [`Exchange`] finished
//! when the body ends or is dropped. It looks at each chunk without copying or delaying it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::record::{Exchange, Outcome};
use crate::backends::{TimeoutPhase, UpstreamBody};

/// Error type of a response body that had to be cut (non-SSE only; SSE ends with an event).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyCut(String);

pub struct ProxyBody {
    upstream: UpstreamBody,
    sse: bool,
    idle: Duration,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// Kept only to be released when the body is done.
    _permit: Option<OwnedSemaphorePermit>,
    exchange: Exchange,
    done: bool,
}

impl ProxyBody {
    pub fn new(
        upstream: UpstreamBody,
        sse: bool,
        idle: Duration,
        deadline: Instant,
        permit: Option<OwnedSemaphorePermit>,
        exchange: Exchange,
    ) -> ProxyBody {
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(deadline.min(now + idle)));
        ProxyBody { upstream, sse, idle, deadline, timer, _permit: permit, exchange, done: false }
    }

    /// Ends the body after an upstream failure: an SSE error event for streams, a cut
    /// connection for anything else (a truncated JSON body must not look complete).
    fn fail(&mut self, code: &str, message: String) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        self.done = true;
        self.exchange.error = Some(message.clone());
        self.exchange.finish(Outcome::Failed);
        if !self.sse {
            return Poll::Ready(Some(Err(BodyCut(message))));
        }
        let event =
            serde_json::json!({"error": {"message": message, "type": "api_error", "code": code, "param": null}});
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("data: {event}\n\n"))))))
    }

    fn timed_out(&self, now: Instant) -> Option<TimeoutPhase> {
        if now >= self.deadline {
            Some(TimeoutPhase::Total)
        } else if now >= self.timer.deadline() {
            Some(TimeoutPhase::Idle)
        } else {
            None
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
        match this.upstream.poll_chunk(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.exchange.bytes_out += chunk.len() as u64;
                let next = (Instant::now() + this.idle).min(this.deadline);
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => {
                let message = format!("backend `{}` failed mid-response: {err}", this.exchange.backend);
                this.fail("upstream_error", message)
            }
            Poll::Ready(None) => {
                this.done = true;
                this.exchange.finish(Outcome::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let phase = this.timed_out(Instant::now()).unwrap_or(TimeoutPhase::Idle);
                let limit = if phase == TimeoutPhase::Total { "total" } else { "idle" };
                let message = format!("backend `{}` timed out mid-response ({limit} timeout)", this.exchange.backend);
                this.fail("upstream_timeout", message)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.upstream {
            UpstreamBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            UpstreamBody::Http(incoming) if !self.sse => incoming.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
