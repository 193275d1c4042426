//! The HTTP side of the Responses and Messages APIs besides inference: `GET` and `DELETE
//! /v1/responses/{id}`, `POST /v1/messages/count_tokens`, and the Messages API's own key
//! header.
//!
//! Owns: authenticating these calls and answering them. Must not: translate or store
//! anything itself (the request path's `inbound` does).

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::error::GatewayError;
use crate::proxy::inbound;
use crate::runtime::Snapshot;
use crate::wire::body::{self, Body, read_body};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Anthropic clients send their key in `x-api-key`; weir reads keys from `Authorization`.
/// A request with only `x-api-key` gets it as a bearer token.
pub fn accept_x_api_key(headers: &mut HeaderMap) {
    if headers.contains_key(AUTHORIZATION) {
        return;
    }
    let Some(key) = headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()) else { return };
    if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", key.trim())) {
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
}

/// `GET` or `DELETE /v1/responses/{id}`.
pub async fn response(
    snapshot: &Snapshot,
    method: &Method,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    let identity = snapshot.keys.authenticate(headers)?;
    let answer = if method == Method::DELETE {
        inbound::delete_response(snapshot, id, identity.name()).await?
    } else {
        inbound::get_response(snapshot, id, identity.name()).await?
    };
    Ok(body::json(StatusCode::OK, answer.to_string()))
}

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(snapshot: &Snapshot, request: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let (parts, incoming) = request.into_parts();
    let identity = snapshot.keys.authenticate(&parts.headers)?;
    let body = read_body(&parts, incoming, snapshot.config.server.max_body).await?;
    let (model, tokens) = inbound::count_tokens(snapshot, &body)?;
    snapshot.route(&model)?;
    if !identity.may_use(&model) {
        return Err(crate::auth::AuthError::ModelNotAllowed { model }.into());
    }
    Ok(body::json(StatusCode::OK, json!({"input_tokens": tokens}).to_string()))
}
