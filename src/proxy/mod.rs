//! Proxy: the request path for inference endpoints, from parsed request to streamed answer.
//!
//! Owns: the order of steps — authenticate, read and parse the body once, resolve the model,
//! pick a target, call the backend, stream the answer back with weir's headers — and the
//! per-request [`Exchange`] that every tap reports from.
//! Must not: decide routing policy (`router`), speak a provider's protocol (`backends`), or
//! map errors to statuses (`server::error`).

mod record;
mod request;
mod response;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::Identity;
use crate::backends::{BackendCall, BackendError, BackendResponse, UpstreamAuth};
use crate::config::AuthMode;
use crate::headers::{X_ACCEL_BUFFERING, X_WEIR_BACKEND, X_WEIR_CACHE, X_WEIR_OVERHEAD_MS, X_WEIR_VARIANT};
use crate::server::body::{self, Body};
use crate::server::error::{GatewayError, upstream_message};
use crate::snapshot::Snapshot;

pub use record::{Attempt, AttemptKind, CAPTURE_LIMIT, CacheStatus, Exchange, Outcome};
pub use request::{RequestError, RequestHead, parse_head, read_body};

/// Upstream error bodies are read whole up to this size to relay their message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// The OpenAI endpoints weir forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Serves one inference request to the end; never fails — errors become OpenAI-shaped
/// responses and are recorded on the exchange.
pub async fn handle(
    snapshot: Arc<Snapshot>,
    request: Request<Incoming>,
    endpoint: Endpoint,
    request_id: String,
    started: Instant,
) -> Response<Body> {
    let mut exchange = Exchange::new(Arc::clone(&snapshot), request_id, started);
    exchange.endpoint = Some(endpoint);
    crate::telemetry::trace::begin(&mut exchange, request.headers());
    snapshot.datasets.begin(&exchange.request_id);
    match forward(&snapshot, request, endpoint, &mut exchange).await {
        Ok(answer) => answer.into_response(exchange),
        Err(err) => {
            let mut response = err.to_response();
            exchange.status = response.status().as_u16();
            exchange.error = Some(err.to_string());
            set_overhead(response.headers_mut(), &mut exchange);
            // Known once a target was picked; errors before that have no backend to name.
            if !exchange.backend.is_empty() {
                set_header(response.headers_mut(), X_WEIR_BACKEND, &exchange.backend);
                set_header(response.headers_mut(), X_WEIR_VARIANT, &exchange.variant);
            }
            exchange.finish(Outcome::Completed);
            response
        }
    }
}

/// An upstream answer ready to stream to the client.
struct Answer {
    upstream: BackendResponse,
    /// When the upstream request was sent; the `total` timeout counts from here.
    sent: tokio::time::Instant,
    stream: bool,
    backend: Arc<crate::backends::BackendRuntime>,
}

async fn forward(
    snapshot: &Snapshot,
    request: Request<Incoming>,
    endpoint: Endpoint,
    exchange: &mut Exchange,
) -> Result<Answer, GatewayError> {
    let (parts, incoming) = request.into_parts();
    let identity = snapshot.keys.authenticate(&parts.headers)?;
    exchange.key = identity.name().to_owned();
    let body = request::read_body(&parts.headers, incoming, snapshot.config.server.max_body).await?;
    let head = parse_head(endpoint, &body)?;
    exchange.model.clone_from(&head.model);
    exchange.stream = head.stream;
    exchange.request_body = body.clone();

    let route = snapshot.route(&head.model)?;
    if !identity.may_use(&head.model) {
        return Err(crate::auth::AuthError::ModelNotAllowed { model: head.model }.into());
    }
    exchange.experiment.clone_from(&route.config.experiment);
    let target = route.pick();
    exchange.backend.clone_from(&target.backend.config.name);
    exchange.variant.clone_from(&target.variant);

    let auth = match snapshot.keys.mode() {
        AuthMode::Passthrough => UpstreamAuth::Client(parts.headers.get(AUTHORIZATION)),
        AuthMode::Keys | AuthMode::None => UpstreamAuth::Backend,
    };
    let call = BackendCall {
        endpoint,
        body: head.body_for_upstream(&body, &target.model),
        stream: head.stream,
        auth,
        request_id: &exchange.request_id,
        traceparent: exchange.trace.upstream_header(exchange.attempts.len()),
    };
    let sent = tokio::time::Instant::now();
    let offset = exchange.started.elapsed();
    let result = target.backend.send(call).await;
    exchange.backend_wait = sent.elapsed();
    exchange.attempts.push(Attempt {
        kind: AttemptKind::Primary,
        backend: target.backend.config.name.clone(),
        model: target.model.clone(),
        variant: target.variant.clone(),
        offset,
        duration: exchange.backend_wait,
        status: result.as_ref().ok().map(|r| r.status.as_u16()),
        error: result.as_ref().err().map(ToString::to_string),
    });
    if let Err(err) = &result {
        snapshot.metrics.backend_error(target.backend.name(), err.reason());
    }
    let upstream = result?;
    if !upstream.status.is_success() {
        let err = rejected(target.backend.name(), upstream, target.backend.config.timeouts.idle).await;
        snapshot.metrics.backend_error(target.backend.name(), err.reason());
        return Err(err.into());
    }
    Ok(Answer { upstream, sent, stream: head.stream, backend: Arc::clone(&target.backend) })
}

/// Reads a failed upstream answer's (small) body to relay its status and message.
async fn rejected(backend: &str, upstream: BackendResponse, wait: std::time::Duration) -> BackendError {
    let status = upstream.status;
    let retry_after = upstream.headers.get(http::header::RETRY_AFTER).cloned();
    let body = match tokio::time::timeout(wait, upstream.body.read_bounded(ERROR_BODY_LIMIT)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) | Err(_) => Bytes::new(),
    };
    let message = upstream_message(&body);
    BackendError::Rejected { backend: backend.to_owned(), status, message, body, retry_after }
}

impl Answer {
    fn into_response(self, mut exchange: Exchange) -> Response<Body> {
        let upstream = self.upstream;
        let sse = self.stream
            || upstream.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        exchange.status = upstream.status.as_u16();
        exchange.sse = sse;
        exchange.capture = Some(crate::wire::Capture::new(record::CAPTURE_LIMIT));
        let mut headers = upstream.headers;
        if sse {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        } else if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        set_header(&mut headers, X_WEIR_BACKEND, &exchange.backend);
        set_header(&mut headers, X_WEIR_VARIANT, &exchange.variant);
        headers.insert(X_WEIR_CACHE, HeaderValue::from_static(exchange.cache.as_str()));
        set_overhead(&mut headers, &mut exchange);

        let timeouts = self.backend.config.timeouts;
        let deadline = self.sent + timeouts.total;
        let body = response::ProxyBody::new(upstream.body, sse, timeouts.idle, deadline, upstream.permit, exchange);
        let mut response = Response::new(body.map_err(Into::into).boxed_unsync());
        *response.status_mut() = upstream.status;
        *response.headers_mut() = headers;
        response
    }
}

/// `GET /v1/models`: the public models this key may use, in OpenAI's list shape.
pub fn list_models(snapshot: &Snapshot, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
    let identity: Identity<'_> = snapshot.keys.authenticate(headers)?;
    let created = snapshot.loaded_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut names: Vec<&String> = snapshot.models.keys().filter(|name| identity.may_use(name)).collect();
    names.sort();
    let data: Vec<_> = names
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "weir"}))
        .collect();
    Ok(body::json(StatusCode::OK, json!({"object": "list", "data": data}).to_string()))
}

/// Reports weir's own time so far, and keeps it for `weir_overhead_seconds`.
fn set_overhead(headers: &mut HeaderMap, exchange: &mut Exchange) {
    let overhead = exchange.overhead();
    exchange.weir_time = Some(overhead);
    headers.insert(X_WEIR_OVERHEAD_MS, millis_header(overhead));
}

/// `1.234` (milliseconds, microsecond precision), formatted with integers: float
/// formatting showed up in profiles of the hot path.
pub fn millis_header(duration: std::time::Duration) -> HeaderValue {
    let micros = duration.as_micros();
    let text = format!("{}.{:03}", micros / 1000, micros % 1000);
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0.000"))
}

fn set_header(headers: &mut HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
