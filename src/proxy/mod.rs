//! Proxy: the request path for inference endpoints, from parsed request to streamed answer.
//!
//! Owns: the order of steps — authenticate, read and parse the body once, resolve the model,
//! pick a target, call the backend, stream the answer back with weir's headers — and the
//! per-request [`Exchange`] that every tap reports from.
//! Must not: decide routing policy (`router`), speak a provider's protocol (`backends`), or
//! map errors to statuses (`server::error`).

mod cached;
mod record;
mod request;
mod response;
mod sse_filter;

use std::sync::Arc;
use std::time::Instant;

use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::Identity;
use crate::backends::{BackendResponse, UpstreamAuth};
use crate::config::AuthMode;
use crate::headers::{X_ACCEL_BUFFERING, X_WEIR_BACKEND, X_WEIR_CACHE, X_WEIR_OVERHEAD_MS, X_WEIR_VARIANT};
use crate::router::{self, Outbound, Pick};
use crate::server::body::{self, Body};
use crate::server::error::GatewayError;
use crate::snapshot::Snapshot;

pub use record::{Attempt, AttemptKind, CAPTURE_LIMIT, CacheStatus, Exchange, Outcome};
pub use request::{RequestError, RequestHead, parse_head, read_body};

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
        Ok(Reply::Upstream(answer)) => answer.into_response(exchange),
        Ok(Reply::Cache(served)) => cached::response(served, exchange),
        Err(err) => {
            let mut response = err.to_response();
            exchange.status = response.status().as_u16();
            exchange.error = Some(err.to_string());
            set_overhead(response.headers_mut(), &mut exchange);
            response.headers_mut().insert(X_WEIR_CACHE, HeaderValue::from_static(exchange.cache.as_str()));
            if let Some(admission) = &exchange.admission {
                admission.view.apply(response.headers_mut());
            }
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

/// What `forward` found to send back.
enum Reply {
    Upstream(Answer),
    /// Served by the cache: an entry, or another identical request's answer in flight.
    Cache(crate::cache::Served),
}

/// An upstream answer ready to stream to the client.
struct Answer {
    upstream: BackendResponse,
    /// When the upstream request was sent; the `total` timeout counts from here.
    sent: tokio::time::Instant,
    stream: bool,
    /// weir asked upstream for the usage chunk; the client did not.
    strip_usage: bool,
    backend: Arc<crate::backends::BackendRuntime>,
}

async fn forward(
    snapshot: &Snapshot,
    request: Request<Incoming>,
    endpoint: Endpoint,
    exchange: &mut Exchange,
) -> Result<Reply, GatewayError> {
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
    // Limits: once the key may use the model, before anything is looked up or sent. A
    // response cache's lookup comes after this, so hits count against the key's limits too.
    exchange.admission = snapshot.limits.admit(&snapshot.metrics, &exchange.key, endpoint, route, &body).await?;
    if let Some(ttl) = route.config.cache_ttl {
        let scope = cached::scope(snapshot, &identity, &parts.headers);
        let lookup = crate::cache::CacheRequest {
            endpoint,
            key_name: &scope,
            model: &head.model,
            body: &body,
            stream: head.stream,
            ttl,
            headers: &parts.headers,
        };
        if let Some(served) = snapshot.cache.begin(lookup, exchange).await {
            return Ok(Reply::Cache(served));
        }
    }
    exchange.experiment.clone_from(&route.config.experiment);
    let pick = Pick {
        pinned: route.pinned(parts.headers.get(X_WEIR_VARIANT))?,
        sticky: route.sticky_hash(identity.name(), head.user.as_deref(), &parts.headers),
    };

    let auth = match snapshot.keys.mode() {
        AuthMode::Passthrough => UpstreamAuth::Client(parts.headers.get(AUTHORIZATION)),
        AuthMode::Keys | AuthMode::None => UpstreamAuth::Backend,
    };
    let outbound = Outbound { endpoint, head: &head, body: &body, auth };
    let dispatched = router::dispatch(route, pick, outbound, exchange).await?;
    exchange.target_hold = Some(dispatched.hold);
    Ok(Reply::Upstream(Answer {
        upstream: dispatched.response,
        sent: dispatched.sent,
        stream: head.stream,
        strip_usage: head.injects_usage,
        backend: dispatched.backend,
    }))
}

impl Answer {
    fn into_response(self, mut exchange: Exchange) -> Response<Body> {
        let upstream = self.upstream;
        let sse = self.stream
            || upstream.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        exchange.status = upstream.status.as_u16();
        let mut headers = upstream.headers;
        prepare_answer(&mut headers, sse, &mut exchange);

        let timeouts = self.backend.config.timeouts;
        let deadline = self.sent + timeouts.total;
        let mut body = response::ProxyBody::new(upstream.body, sse, timeouts.idle, deadline, upstream.permit, exchange);
        if self.strip_usage && sse {
            body = body.strip_usage_chunk();
        }
        let mut response = Response::new(body.map_err(Into::into).boxed_unsync());
        *response.status_mut() = upstream.status;
        *response.headers_mut() = headers;
        response
    }
}

/// What every answer sent to the client gets, upstream or cached: the content type (SSE
/// headers for streams), weir's headers, the key's rate headers, and a capture so the taps
/// can read the answer back when the exchange finishes.
fn prepare_answer(headers: &mut HeaderMap, sse: bool, exchange: &mut Exchange) {
    exchange.sse = sse;
    exchange.capture = Some(crate::wire::Capture::new(record::CAPTURE_LIMIT));
    if sse {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    } else if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    set_header(headers, X_WEIR_BACKEND, &exchange.backend);
    set_header(headers, X_WEIR_VARIANT, &exchange.variant);
    headers.insert(X_WEIR_CACHE, HeaderValue::from_static(exchange.cache.as_str()));
    set_overhead(headers, exchange);
    if let Some(admission) = &exchange.admission {
        admission.view.apply(headers);
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
