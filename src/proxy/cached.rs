//! Answers weir serves itself from the cache: a stored entry (JSON as stored, or replayed as
//! SSE) or another identical request's stream as it arrives.
//!
//! Owns: the response head of such answers (the same headers an upstream answer gets) and
//! [`CachedBody`], which reports every chunk to the [`Exchange`] and finishes it exactly once.
//! Must not: call a backend, or end a shared stream that broke with anything but one SSE
//! error event (never a made-up finish).

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::Exchange;
use crate::apis::{self, StreamError};
use crate::auth::Identity;
use crate::cache::{Next, Served};
use crate::config::AuthMode;
use crate::runtime::Snapshot;
use crate::wire::body::Body;
use crate::wire::{Endpoint, Outcome};

/// Whose entries a request may see under `scope: key`: the virtual key's name; with
/// `auth: passthrough` (every client is `anonymous`), a digest of the client's own credential.
pub fn scope<'a>(snapshot: &Snapshot, identity: &'a Identity<'_>, headers: &HeaderMap) -> Cow<'a, str> {
    match snapshot.keys.mode() {
        AuthMode::Passthrough => {
            let credential = headers.get(AUTHORIZATION).map_or(&[][..], HeaderValue::as_bytes);
            Cow::Owned(format!("passthrough:{}", hex::encode(Sha256::digest(credential))))
        }
        AuthMode::Keys | AuthMode::None => Cow::Borrowed(identity.name()),
    }
}

/// The response for an answer the cache serves.
pub fn response(served: Served, mut exchange: Exchange) -> Response<Body> {
    let (source, sse, origin) = match served {
        Served::Whole { body, sse, origin } => (Source::Whole(Some(body)), sse, origin),
        Served::Shared { follower, origin } => (Source::Shared(Box::pin(follower.into_stream())), true, origin),
    };
    exchange.set_backend(origin.backend, origin.variant);
    exchange.record.status = StatusCode::OK.as_u16();
    let mut headers = HeaderMap::new();
    super::prepare_answer(&mut headers, sse, &mut exchange);
    let body = CachedBody { source, exchange, done: false };
    let mut response = Response::new(body.map_err(Into::into).boxed_unsync());
    *response.headers_mut() = headers;
    response
}

/// The one event that ends a shared stream whose leader failed, in the client's API.
fn failure_event(endpoint: Option<Endpoint>, message: String) -> Vec<u8> {
    let err = StreamError::Upstream { code: Some("upstream_error".into()), message };
    let mut out = Vec::new();
    match endpoint {
        Some(Endpoint::Responses) => apis::responses::stream::Emitter::default().error(&mut out, &err),
        Some(Endpoint::Messages) => apis::messages::stream::write_error(&mut out, &err),
        _ => {
            let event = serde_json::json!({"error": {"message": err.message(), "type": "api_error", "code": "upstream_error", "param": null}});
            out = format!("data: {event}\n\n").into_bytes();
        }
    }
    out
}

enum Source {
    Whole(Option<Bytes>),
    Shared(Pin<Box<dyn Stream<Item = Next> + Send>>),
}

/// Error type of [`CachedBody`]; it never fails (a broken shared stream ends with an event).
#[derive(Debug, thiserror::Error)]
#[error("cached body")]
pub struct Never;

struct CachedBody {
    source: Source,
    exchange: Exchange,
    done: bool,
}

impl http_body::Body for CachedBody {
    type Data = Bytes;
    type Error = Never;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let next = match &mut this.source {
            Source::Whole(body) => body.take().map(Next::Chunk),
            Source::Shared(stream) => std::task::ready!(stream.as_mut().poll_next(cx)),
        };
        match next {
            Some(Next::Chunk(chunk)) => {
                this.exchange.observe_chunk(&chunk);
                if matches!(this.source, Source::Whole(_)) {
                    // The whole answer is out: hyper may drop a body whose length is reached
                    // without polling it again, so the exchange ends here, as completed.
                    this.done = true;
                    this.exchange.finish(Outcome::Completed);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Next::Failed(message)) => {
                this.done = true;
                this.exchange.record.error = Some(message.clone());
                this.exchange.finish(Outcome::Failed);
                let event = failure_event(this.exchange.record.endpoint, message);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
            Some(Next::Done) | None => {
                this.done = true;
                this.exchange.finish(Outcome::Completed);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Whole(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Source::Whole(None) => SizeHint::with_exact(0),
            Source::Shared(_) => SizeHint::default(),
        }
    }
}
