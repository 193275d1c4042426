//! HTTP bodies: the response body type every handler returns, small constructors for it,
//! and the bounded read of a request body.
//!
//! Owns: [`Body`] and [`read_body`] (size limit, timeout for a body still in flight).
//! Must not: interpret what a body says.

use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::request::RequestError;

/// Bodies up to this size are copied out of the connection's read buffer (see [`compact`]).
const COMPACT_BELOW: usize = 64 * 1024;

/// A client may take this long to send its body before we give up on it.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Reads the whole request body, refusing more than `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Incoming, limit: u64) -> Result<Bytes, RequestError> {
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(RequestError::BodyTooLarge { limit });
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let mut collect = std::pin::pin!(limited.collect());
    // Small bodies usually arrive with the headers: only a body still in flight needs a timer.
    let collected = match std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, collect)
            .await
            .map_err(|_| RequestError::BodyTimeout(BODY_READ_TIMEOUT))?,
    };
    match collected {
        Ok(collected) => Ok(compact(collected.to_bytes())),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(RequestError::BodyTooLarge { limit }),
        Err(err) => Err(RequestError::BodyRead(err.to_string())),
    }
}

/// A body that came in one piece is a slice of the connection's read buffer, which it keeps
/// alive whole for as long as the request holds the body (to the end of a long stream). A
/// small one is copied into an allocation of its own size.
fn compact(body: Bytes) -> Bytes {
    if body.len() < COMPACT_BELOW { Bytes::copy_from_slice(&body) } else { body }
}
