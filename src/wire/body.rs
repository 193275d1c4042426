//! HTTP bodies: the response body type every handler returns, small constructors for it,
//! and the bounded read of a request body.
//!
//! Owns: [`Body`], [`read_body`] (size limit, timeout for a body still in flight, the
//! memory budgets of bodies being read: [`BodyBudgets`]) and [`discard`] for a body refused
//! unread.
//! Must not: interpret what a body says.

use std::task::Poll;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::request::RequestError;

/// Bodies up to this size are copied out of the connection's read buffer (see [`compact`]).
const COMPACT_BELOW: usize = 64 * 1024;

/// A client may take this long to send its body before we give up on it.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// What is read and dropped of a body refused before it was read ([`discard`]).
const DISCARD_LIMIT: u64 = 256 * 1024;
const DISCARD_TIMEOUT: Duration = Duration::from_millis(500);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streaming bodies hold non-`Sync` upstream streams, hence the unsync box.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Reads the whole request body, refusing more than `limit` bytes, charging what it holds to
/// the connection's and the server's [`BodyBudgets`] (found in `parts.extensions`, put there
/// by the listener) while it reads.
pub async fn read_body(parts: &http::request::Parts, body: Incoming, limit: u64) -> Result<Bytes, RequestError> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(RequestError::BodyTooLarge { limit });
    }
    let budgets = parts.extensions.get::<BodyBudgets>();
    let mut charges = budgets.map(|b| [Charge::new(&b.connection), Charge::new(&b.server)]);
    let mut collect = std::pin::pin!(collect(body, limit, charges.as_mut()));
    // Small bodies usually arrive with the headers: only a body still in flight needs a timer.
    match std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, collect)
            .await
            .map_err(|_| RequestError::BodyTimeout(BODY_READ_TIMEOUT))?,
    }
}

async fn collect(
    mut body: Incoming,
    limit: u64,
    mut charges: Option<&mut [Charge<'_>; 2]>,
) -> Result<Bytes, RequestError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| RequestError::BodyRead(err.to_string()))?;
        let Ok(chunk) = frame.into_data() else { continue };
        total = total.saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(RequestError::BodyTooLarge { limit });
        }
        for charge in charges.iter_mut().flat_map(|c| c.iter_mut()) {
            charge.take(chunk.len() as u64)?;
        }
        chunks.push(chunk);
        // Its declared length is reached: done without waiting for hyper's end-of-body
        // wake-up, so the read buffer is let go (below) before hyper's next read on the
        // connection would need a fresh one.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => compact(chunks.swap_remove(0)),
        _ => {
            let mut whole = BytesMut::with_capacity(usize::try_from(total).unwrap_or(usize::MAX));
            chunks.iter().for_each(|chunk| whole.extend_from_slice(chunk));
            whole.freeze()
        }
    })
}

/// Reads and drops what is left of a body a handler refused without reading it (a 401 before
/// the body, an unknown path), so the connection can carry the next request: a client that
/// sent its body with the request would otherwise see the connection closed under its next
/// one. Bounded in bytes and time; `false` when the body did not end within them, and the
/// answer must then close the connection (`Connection: close`) rather than leave it broken.
/// A client waiting for `100 Continue` is not asked for a body it will not need: `false`.
pub async fn discard(headers: &HeaderMap, mut body: Incoming) -> bool {
    if body.is_end_stream() {
        return true;
    }
    let expects_continue =
        headers.get(http::header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return false;
    }
    let drain = async {
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len() as u64);
                if seen > DISCARD_LIMIT {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_TIMEOUT, drain).await.unwrap_or(false)
}

/// Bytes of request bodies held while they are read, for one connection or the whole server:
/// an HTTP/2 client can open hundreds of streams on one connection, each with a body it never
/// finishes, and every such body would otherwise hold up to `server.max_body`.
#[derive(Debug)]
pub struct BodyBudget {
    /// `connection` or `server`, for the refusal's message.
    pub scope: &'static str,
    capacity: u64,
    used: AtomicU64,
}

impl BodyBudget {
    pub fn new(scope: &'static str, capacity: u64) -> BodyBudget {
        BodyBudget { scope, capacity, used: AtomicU64::new(0) }
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.capacity)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }
}

/// The budgets a request's body is charged to; the listener adds them to each request.
#[derive(Debug, Clone)]
pub struct BodyBudgets {
    pub connection: Arc<BodyBudget>,
    pub server: Arc<BodyBudget>,
}

/// What one body has taken from one budget, given back when the read ends either way.
/// A single body never takes more than the whole budget, so one request up to
/// `server.max_body` can always be read on an idle connection, however the budget is sized.
struct Charge<'a> {
    budget: &'a BodyBudget,
    taken: u64,
}

impl<'a> Charge<'a> {
    fn new(budget: &'a BodyBudget) -> Charge<'a> {
        Charge { budget, taken: 0 }
    }

    fn take(&mut self, bytes: u64) -> Result<(), RequestError> {
        let bytes = bytes.min(self.budget.capacity.saturating_sub(self.taken));
        if bytes == 0 {
            return Ok(());
        }
        if !self.budget.try_take(bytes) {
            return Err(RequestError::BodiesOverBudget { scope: self.budget.scope, capacity: self.budget.capacity });
        }
        self.taken = self.taken.saturating_add(bytes);
        Ok(())
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

/// A body that came in one piece is a slice of the connection's read buffer, which it keeps
/// alive whole for as long as the request holds the body (to the end of a long stream). A
/// small one is copied into an allocation of its own size.
fn compact(body: Bytes) -> Bytes {
    if body.len() < COMPACT_BELOW { Bytes::copy_from_slice(&body) } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_a_budget_and_give_it_back() {
        let budget = BodyBudget::new("connection", 100);
        let mut first = Charge::new(&budget);
        first.take(60).unwrap();
        let mut second = Charge::new(&budget);
        second.take(40).unwrap();
        assert!(matches!(second.take(1), Err(RequestError::BodiesOverBudget { scope: "connection", capacity: 100 })));
        drop(first);
        second.take(50).unwrap();
        drop(second);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_body_alone_is_never_refused() {
        let budget = BodyBudget::new("server", 100);
        let mut alone = Charge::new(&budget);
        for _ in 0..10 {
            alone.take(u64::MAX).unwrap();
        }
        assert_eq!(budget.used.load(Ordering::Relaxed), 100);
        assert!(Charge::new(&budget).take(1).is_err());
    }
}
