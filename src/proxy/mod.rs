//! Proxy: the request path for inference endpoints, from parsed request to streamed answer.
//!
//! Owns: the order of steps — authenticate, read and parse the body once, resolve the model,
//! admit against the key's limits, look the cache up, pick a target and call it (its prompt
//! rendered in, when the request or the target names one), stream the
//! answer back with weir's headers — and the per-request [`Exchange`] with the guards those
//! steps take, released when the request ends. It is the only module that calls the
//! features one after another.
//! Must not: decide routing policy (`router`), speak a provider's protocol (`backends`), or
//! map errors to statuses (the server does, for the [`Refused`] it gets back).

mod cached;
mod exchange;
pub mod inbound;
mod response;
pub(crate) mod sse_filter;

use std::sync::Arc;
use std::time::Instant;

use http::header::{AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::AuthError;
use crate::backends::{BackendError, BackendResponse, BackendRuntime, UpstreamAuth, UpstreamBody};
use crate::cache::{CacheRequest, to_sse};
use crate::config::AuthMode;
use crate::limits::{AdmitRequest, LimitError};
use crate::prompts::{PromptCall, PromptError, PromptPlan};
use crate::router::{self, DispatchError, Native, Outbound, Pick, RouteError};
use crate::runtime::Snapshot;
use crate::wire::body::{Body, discard, read_body};
use crate::wire::headers::{
    X_ACCEL_BUFFERING, X_WEIR_BACKEND, X_WEIR_CACHE, X_WEIR_OVERHEAD_MS, X_WEIR_VARIANT, millis_header,
};
use crate::wire::request::{MAX_JSON_DEPTH, check_structure};
use crate::wire::{CAPTURE_LIMIT, Endpoint, Outcome, RequestError, parse_head};

use exchange::Exchange;
use inbound::Inbound;

/// Why the request path refused a request, before any answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Boxed: a refusal carries its rate headers.
    #[error(transparent)]
    Limit(Box<LimitError>),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A Responses or Messages request that cannot go ahead.
    #[error(transparent)]
    Inbound(#[from] inbound::InboundError),
    /// The request's `prompt` is malformed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

impl From<LimitError> for ProxyError {
    fn from(err: LimitError) -> Self {
        ProxyError::Limit(Box::new(err))
    }
}

/// A refused request, still to be answered: the server renders the error into its HTTP
/// form, and [`Refused::respond`] adds weir's headers and ends the request's exchange.
#[derive(Debug)]
pub struct Refused {
    pub error: ProxyError,
    exchange: Exchange,
    /// Whether the connection can carry another request: a body refused unread was read to
    /// its end (bounded) so it can, else the answer says `Connection: close`.
    keep_alive: bool,
}

impl Refused {
    /// Sends `render(error)` as the answer: weir's headers (overhead, cache status, the
    /// key's rate headers, the backend tried) are added and the request is recorded.
    pub fn respond(self, render: impl FnOnce(ProxyError) -> Response<Body>) -> Response<Body> {
        let Refused { error, mut exchange, keep_alive } = self;
        let message = error.to_string();
        let mut response = render(error);
        if !keep_alive {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        exchange.record.status = response.status().as_u16();
        exchange.record.error = Some(message);
        let headers = response.headers_mut();
        set_overhead(headers, &mut exchange);
        headers.insert(X_WEIR_CACHE, HeaderValue::from_static(exchange.record.cache.as_str()));
        if let Some(admission) = &exchange.guards.admission {
            admission.view.apply(headers);
        }
        // Known once a target was picked; errors before that have no backend to name.
        if !exchange.record.backend.is_empty() {
            set_header(headers, X_WEIR_BACKEND, &exchange.record.backend);
            set_header(headers, X_WEIR_VARIANT, &exchange.record.variant);
        }
        exchange.finish(Outcome::Completed);
        response
    }
}

/// A request's ids: weir's own, and the `x-request-id` the client sent (kept beside it).
#[derive(Debug)]
pub struct Ids {
    pub request_id: String,
    pub client: Option<String>,
}

/// Serves one inference request: the streamed answer, or the refusal for the server to
/// render. Either way the request is recorded exactly once.
pub async fn handle(
    snapshot: Arc<Snapshot>,
    request: Request<Incoming>,
    endpoint: Endpoint,
    ids: Ids,
    started: Instant,
) -> Result<Response<Body>, Refused> {
    let mut exchange = Exchange::begin(Arc::clone(&snapshot), ids.request_id, started, endpoint, request.headers());
    exchange.record.client_request_id = ids.client;
    let (mut parts, incoming) = request.into_parts();
    // The head is parsed into slices of the connection's read buffer; held while the upstream
    // answers, they would make hyper allocate a second buffer for the reads it does meanwhile
    // to notice a client that leaves. The path has been routed on and is not needed again.
    parts.uri = http::Uri::default();
    crate::wire::headers::detach_values(&mut parts.headers);
    let mut unread = Some(incoming);
    match forward(&snapshot, &parts, &mut unread, endpoint, &mut exchange).await {
        Ok(Reply::Upstream(answer)) => Ok(answer.into_response(exchange)),
        Ok(Reply::Cache(served)) => Ok(cached::response(served, exchange)),
        Err(error) => {
            // Refused before its body was read (a wrong key): read it off the connection.
            let keep_alive = match unread.take() {
                Some(body) => discard(&parts.headers, body).await,
                None => true,
            };
            Err(Refused { error, exchange, keep_alive })
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
    backend: Arc<BackendRuntime>,
    /// A Responses or Messages request answered by a chat backend: its answer is converted.
    inbound: Option<Box<Inbound>>,
}

/// `unread` is the request body, taken when it is read: a refusal that leaves it there was
/// made before the body was read.
async fn forward(
    snapshot: &Snapshot,
    parts: &http::request::Parts,
    unread: &mut Option<Incoming>,
    endpoint: Endpoint,
    exchange: &mut Exchange,
) -> Result<Reply, ProxyError> {
    let identity = snapshot.keys.authenticate(&parts.headers)?;
    exchange.record.key = identity.name().to_owned();
    if !snapshot.datasets.is_empty() || !snapshot.experiments.is_empty() {
        exchange.owner = Some(snapshot.keys.owner(&identity, &parts.headers));
    }
    let Some(incoming) = unread.take() else {
        return Err(RequestError::BodyRead("the request body was already taken".into()).into());
    };
    let body = read_body(parts, incoming, snapshot.config.server.max_body).await?;
    // The Responses and Messages APIs run on their chat translation; chat backends get it,
    // backends that speak the client's API get the client's own request.
    let inbound = match endpoint.is_inbound() {
        true => {
            check_structure(&body, MAX_JSON_DEPTH)?;
            Some(inbound::prepare(snapshot, endpoint, &body, &parts.headers, identity.name()).await?)
        }
        false => None,
    };
    let parsed;
    let (head, chat_endpoint, chat_body) = match &inbound {
        Some(inbound) => (&inbound.chat_head, Endpoint::ChatCompletions, &inbound.chat_body),
        None => {
            parsed = parse_head(endpoint, &body)?;
            (&parsed, endpoint, &body)
        }
    };
    // Recorded once it is known to be JSON of a depth every reader of the dataset can take.
    exchange.record.request_body = body.clone();
    let prompt_call = head.prompt.as_ref().map(PromptCall::from_json).transpose()?;
    exchange.record.model.clone_from(&head.model);
    exchange.record.stream = head.stream;

    let route = snapshot.route(&head.model)?;
    exchange.record.model_configured = true;
    if !identity.may_use(&head.model) {
        return Err(AuthError::ModelNotAllowed { model: head.model.clone() }.into());
    }
    // Limits: once the key may use the model, before anything is looked up or sent. A
    // response cache's lookup comes after this, so hits count against the key's limits too.
    let admit = AdmitRequest {
        key: identity.name(),
        endpoint: chat_endpoint,
        models: route.token_models(),
        price: route.config.price,
        body: chat_body,
    };
    exchange.guards.admission = snapshot.limits.admit(&snapshot.metrics, admit).await?;
    // Only chat requests that name a prompt, or whose targets fix one, pay for rendering.
    let prompts = (matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Responses)
        && (prompt_call.is_some() || route.fixes_prompts()))
    .then_some(PromptPlan { store: &snapshot.prompts, call: prompt_call.as_ref() });
    if let Some(ttl) = route.config.cache_ttl {
        let scope = cached::scope(snapshot, &identity, &parts.headers);
        let context = prompts.map(|plan| {
            plan.fingerprint(route.targets.iter().chain(&route.fallbacks).filter_map(|t| t.prompt.as_ref()))
        });
        let lookup = snapshot
            .cache
            .begin(CacheRequest {
                endpoint,
                key_name: &scope,
                model: &head.model,
                body: &body,
                stream: head.stream,
                ttl,
                context: context.as_deref().unwrap_or_default(),
                headers: &parts.headers,
                metrics: &snapshot.metrics,
            })
            .await;
        exchange.record.cache = lookup.status;
        if lookup.fill.is_some() {
            exchange.wants_assembly = true;
            exchange.guards.fill = lookup.fill;
        }
        if let Some(served) = lookup.served {
            return Ok(Reply::Cache(served));
        }
    }
    exchange.record.experiment.clone_from(&route.config.experiment);
    let pick = Pick {
        pinned: route.pinned(parts.headers.get(X_WEIR_VARIANT))?,
        sticky: route.sticky_hash(identity.name(), head.user.as_deref(), &parts.headers),
    };

    let auth = match snapshot.keys.mode() {
        AuthMode::Passthrough => UpstreamAuth::Client(parts.headers.get(AUTHORIZATION)),
        AuthMode::Keys | AuthMode::None => UpstreamAuth::Backend,
    };
    let native = inbound.as_ref().and_then(|inbound| {
        let head = inbound.native_head.as_ref()?;
        let body = inbound.native_body.as_ref().unwrap_or(&body);
        Some(Native { endpoint, head, body, headers: &inbound.native_headers })
    });
    let outbound = Outbound { endpoint: chat_endpoint, head, body: chat_body, auth, native, prompts };
    let dispatched = router::dispatch(route, pick, outbound, &snapshot.metrics, &mut exchange.record).await?;
    exchange.guards.target = Some(dispatched.hold);
    let stream = head.stream;
    let strip_usage = head.injects_usage && !dispatched.native;
    let mut inbound = inbound;
    if dispatched.native {
        // A native Responses answer is stored once read back, under the upstream's id.
        exchange.store = inbound.as_mut().and_then(|inbound| inbound.store.take());
    }
    let mut upstream = dispatched.response;
    // A native answer is in the client's own API: only chat answers are restreamed.
    if stream && !dispatched.native && is_json(&upstream.headers) {
        upstream = restream(upstream, &dispatched.backend, dispatched.sent).await?;
    }
    Ok(Reply::Upstream(Answer {
        upstream,
        sent: dispatched.sent,
        stream,
        strip_usage,
        backend: dispatched.backend,
        inbound: inbound.filter(|_| !dispatched.native).map(Box::new),
    }))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

/// A stream was asked for and the upstream answered with one JSON body (some servers ignore
/// `stream`): the answer is read, bounded and within the backend's `total` timeout, and
/// replayed as the stream the client asked for (its usage event included, for the taps; the
/// client's stream drops it unless it asked). One that is no completion fails as the
/// upstream's error, before any byte was sent.
async fn restream(
    mut upstream: BackendResponse,
    backend: &BackendRuntime,
    sent: tokio::time::Instant,
) -> Result<BackendResponse, ProxyError> {
    let failed = |detail: &str| {
        ProxyError::Dispatch(DispatchError::from(BackendError::Protocol {
            backend: backend.name().to_owned(),
            detail: format!("answered a stream request with {detail}"),
        }))
    };
    let body = std::mem::replace(&mut upstream.body, UpstreamBody::Full(None));
    let deadline = sent + backend.config.timeouts.total;
    let json = match tokio::time::timeout_at(deadline, body.read_bounded(CAPTURE_LIMIT)).await {
        Ok(Ok(json)) => json,
        Ok(Err(err)) => return Err(failed(&format!("a JSON body that broke off: {err}"))),
        Err(_) => return Err(failed("a JSON body that did not arrive within its total timeout")),
    };
    if json.len() >= CAPTURE_LIMIT {
        // `read_bounded` stopped at the limit: what was read is a cut, not the answer.
        return Err(failed(&format!("a JSON body of {CAPTURE_LIMIT} bytes or more")));
    }
    let stream = to_sse(&json, true).ok_or_else(|| failed("JSON that is not a completion"))?;
    upstream.body = UpstreamBody::Full(Some(stream));
    upstream.headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(upstream)
}

impl Answer {
    fn into_response(self, mut exchange: Exchange) -> Response<Body> {
        let upstream = self.upstream;
        let sse = self.stream
            || upstream.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        exchange.record.status = upstream.status.as_u16();
        let mut headers = upstream.headers;
        prepare_answer(&mut headers, sse, &mut exchange);

        let timeouts = self.backend.config.timeouts;
        let deadline = self.sent + timeouts.total;
        let mut body = response::ProxyBody::new(upstream.body, sse, timeouts.idle, deadline, upstream.permit, exchange);
        if self.strip_usage && sse {
            body = body.strip_usage_chunk();
        }
        if let Some(inbound) = self.inbound {
            let converter = inbound.converter(upstream.status.as_u16(), sse);
            body = body.convert(converter, inbound.store);
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
    exchange.record.sse = sse;
    exchange.answering();
    exchange.start_capture();
    if sse {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    } else if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    set_header(headers, X_WEIR_BACKEND, &exchange.record.backend);
    set_header(headers, X_WEIR_VARIANT, &exchange.record.variant);
    headers.insert(X_WEIR_CACHE, HeaderValue::from_static(exchange.record.cache.as_str()));
    set_overhead(headers, exchange);
    if let Some(admission) = &exchange.guards.admission {
        admission.view.apply(headers);
    }
}

/// Reports weir's own time so far, and keeps it for `weir_overhead_seconds`.
fn set_overhead(headers: &mut HeaderMap, exchange: &mut Exchange) {
    let overhead = exchange.record.overhead();
    exchange.record.weir_time = Some(overhead);
    headers.insert(X_WEIR_OVERHEAD_MS, millis_header(overhead));
}

fn set_header(headers: &mut HeaderMap, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
