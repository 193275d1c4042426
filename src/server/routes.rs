//! The route tables: which path goes to which handler, and nothing else.
//!
//! Owns: the client and admin route tables and weir's own response headers (request id,
//! overhead). Must not: hold handler logic.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use super::error::GatewayError;
use super::{AppState, FnHandler, Handler, admin, feedback, models};
use crate::proxy;
use crate::wire::Endpoint;
use crate::wire::body::Body;
use crate::wire::headers::{X_REQUEST_ID, X_WEIR_OVERHEAD_MS, millis_header};

/// Longest client-supplied `x-request-id` we keep; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The OpenAI-compatible client port.
pub fn client_service(state: Arc<AppState>) -> impl Handler {
    FnHandler::new(state, |state: Arc<AppState>, request: Request<Incoming>| async move {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let mut response = route_client(&state, request, &request_id, started).await;
        finish_headers(response.headers_mut(), &request_id, started);
        response
    })
}

async fn route_client(
    state: &AppState,
    request: Request<Incoming>,
    request_id: &str,
    started: Instant,
) -> Response<Body> {
    // Clients configured with a base URL without `/v1` send the bare paths; accept both.
    let path = request.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let endpoint = match path {
        "/chat/completions" => Some(Endpoint::ChatCompletions),
        "/completions" => Some(Endpoint::Completions),
        "/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    };
    match (request.method(), endpoint, path) {
        (&Method::POST, Some(endpoint), _) => {
            match proxy::handle(state.snapshot(), request, endpoint, request_id.to_owned(), started).await {
                Ok(answer) => answer,
                Err(refused) => refused.respond(|err| GatewayError::from(err).to_response()),
            }
        }
        (&Method::GET, None, "/models") => {
            models::list(&state.snapshot(), request.headers()).unwrap_or_else(|err| err.to_response())
        }
        (&Method::POST, None, "/feedback") => {
            feedback::handle(&state.snapshot(), request).await.unwrap_or_else(|err| err.to_response())
        }
        (method, Some(_), _) | (method, None, "/models" | "/feedback") => {
            GatewayError::MethodNotAllowed { method: method.clone(), path: request.uri().path().to_owned() }
                .to_response()
        }
        _ => GatewayError::NotFound(request.uri().path().to_owned()).to_response(),
    }
}

/// The admin port: health, readiness, and (with the admin token) `/admin/*`.
pub fn admin_service(state: Arc<AppState>) -> impl Handler {
    FnHandler::new(state, |state: Arc<AppState>, request: Request<Incoming>| async move {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let mut response = admin::route(&state, request).await;
        finish_headers(response.headers_mut(), &request_id, started);
        response
    })
}

/// Every response carries its request id and weir's own time, errors included.
fn finish_headers(headers: &mut HeaderMap, request_id: &str, started: Instant) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID, value);
    }
    if !headers.contains_key(&X_WEIR_OVERHEAD_MS) {
        headers.insert(X_WEIR_OVERHEAD_MS, millis_header(started.elapsed()));
    }
}

/// The client's `x-request-id` when it is a sane token, else a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok());
    match given {
        Some(id) if (1..=MAX_REQUEST_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) => {
            id.to_owned()
        }
        _ => new_request_id(),
    }
}

/// `req_` and 32 random hex digits.
fn new_request_id() -> String {
    let mut id = [0u8; 4 + 32];
    id[..4].copy_from_slice(b"req_");
    // Both sizes are fixed, so encoding cannot fail; the fallback only satisfies the types.
    if hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut id[4..]).is_err() {
        return "req_0".to_owned();
    }
    String::from_utf8_lossy(&id).into_owned()
}
