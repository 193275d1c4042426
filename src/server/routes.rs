//! The route tables: which path goes to which handler, and nothing else.
//!
//! Owns: the client and admin route tables, weir's own response headers (request id, always
//! weir's; the client's `x-request-id` travels on as `client_request_id`; overhead), and
//! keeping a connection usable after a refusal made before the body was read. Must not: hold handler logic.

use std::sync::Arc;
use std::time::Instant;

use http::header::CONNECTION;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;

use super::error::GatewayError;
use super::{AppState, FnHandler, Handler, admin, feedback, models, stored};
use crate::proxy;
use crate::wire::Endpoint;
use crate::wire::body::{Body, discard};
use crate::wire::headers::{X_REQUEST_ID, X_WEIR_OVERHEAD_MS, client_request_id, millis_header};

/// The OpenAI-compatible client port.
pub fn client_service(state: Arc<AppState>) -> impl Handler {
    FnHandler::new(state, |state: Arc<AppState>, request: Request<Incoming>| async move {
        let started = Instant::now();
        let request_id = new_request_id();
        let http2 = request.version() == Version::HTTP_2;
        let mut response = route_client(&state, request, &request_id, started).await;
        finish_headers(response.headers_mut(), &request_id, started, http2);
        response
    })
}

async fn route_client(
    state: &AppState,
    mut request: Request<Incoming>,
    request_id: &str,
    started: Instant,
) -> Response<Body> {
    // Clients configured with a base URL without `/v1` send the bare paths; accept both.
    let full_path = request.uri().path().to_owned();
    let path = full_path.strip_prefix("/v1").unwrap_or(&full_path);
    let endpoint = match path {
        "/chat/completions" => Some(Endpoint::ChatCompletions),
        "/completions" => Some(Endpoint::Completions),
        "/embeddings" => Some(Endpoint::Embeddings),
        "/responses" => Some(Endpoint::Responses),
        "/messages" => Some(Endpoint::Messages),
        _ => None,
    };
    // The Messages API answers in its own error shape and takes its key in `x-api-key`.
    let anthropic = path == "/messages" || path.starts_with("/messages/");
    let render = if anthropic { GatewayError::to_anthropic_response } else { GatewayError::to_response };
    if anthropic {
        stored::accept_x_api_key(request.headers_mut());
    }
    let stored_response = path.strip_prefix("/responses/").filter(|id| !id.is_empty() && !id.contains('/'));
    match (request.method(), endpoint, path) {
        (&Method::POST, Some(endpoint), _) => {
            let ids = proxy::Ids { request_id: request_id.to_owned(), client: client_request_id(request.headers()) };
            match proxy::handle(state.snapshot(), request, endpoint, ids, started).await {
                Ok(answer) => answer,
                Err(refused) => refused.respond(|err| render(&GatewayError::from(err))),
            }
        }
        (&Method::POST, None, "/messages/count_tokens") => {
            stored::count_tokens(&state.snapshot(), request).await.unwrap_or_else(|err| render(&err))
        }
        (&Method::GET | &Method::DELETE, None, _) if stored_response.is_some() => {
            let id = stored_response.unwrap_or_default();
            stored::response(&state.snapshot(), request.method(), id, request.headers())
                .await
                .unwrap_or_else(|err| err.to_response())
        }
        (&Method::GET, None, "/models") => {
            models::list(&state.snapshot(), request.headers()).unwrap_or_else(|err| err.to_response())
        }
        (&Method::POST, None, "/feedback") => {
            feedback::handle(&state.snapshot(), request).await.unwrap_or_else(|err| err.to_response())
        }
        (method, Some(_), _) | (method, None, "/models" | "/feedback" | "/messages/count_tokens") => {
            let error = GatewayError::MethodNotAllowed { method: method.clone(), path: full_path.clone() };
            refuse_unread_as(request, &error, render).await
        }
        _ if stored_response.is_some() => {
            let error = GatewayError::MethodNotAllowed { method: request.method().clone(), path: full_path.clone() };
            refuse_unread_as(request, &error, render).await
        }
        _ => refuse_unread_as(request, &GatewayError::NotFound(full_path.clone()), render).await,
    }
}

/// Answers `error` to a request whose body was not read, reading it off the connection first
/// (bounded) so the connection can carry the next request, or closing it when it cannot.
pub(super) async fn refuse_unread(request: Request<Incoming>, error: GatewayError) -> Response<Body> {
    refuse_unread_as(request, &error, GatewayError::to_response).await
}

/// [`refuse_unread`] in the shape `render` gives (the Messages API has its own).
async fn refuse_unread_as(
    request: Request<Incoming>,
    error: &GatewayError,
    render: fn(&GatewayError) -> Response<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let keep_alive = discard(&parts.headers, body).await;
    let mut response = render(error);
    if !keep_alive {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The admin port: health, readiness, and (with the admin token) `/admin/*`.
pub fn admin_service(state: Arc<AppState>) -> impl Handler {
    FnHandler::new(state, |state: Arc<AppState>, request: Request<Incoming>| async move {
        let started = Instant::now();
        let request_id = new_request_id();
        let http2 = request.version() == Version::HTTP_2;
        let mut response = admin::route(&state, request).await;
        finish_headers(response.headers_mut(), &request_id, started, http2);
        response
    })
}

/// Every response carries its request id and weir's own time, errors included. HTTP/2 allows
/// no connection-specific headers, so a refusal's `Connection: close` is for HTTP/1 only.
fn finish_headers(headers: &mut HeaderMap, request_id: &str, started: Instant, http2: bool) {
    if http2 {
        headers.remove(CONNECTION);
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, value);
    }
    if !headers.contains_key(&X_WEIR_OVERHEAD_MS) {
        headers.insert(X_WEIR_OVERHEAD_MS, millis_header(started.elapsed()));
    }
}

/// weir's own id for every request, whatever the client sent: a client's `x-request-id` could
/// collide with another client's (on purpose or not), and ids name requests for feedback.
fn new_request_id() -> String {
    crate::wire::request_id::mint()
}
