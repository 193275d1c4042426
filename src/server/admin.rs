//! The admin port's handlers: `/metrics`, `/healthz`, `/readyz`, and the token-guarded `/admin/*`
//! (`POST /admin/reload`, `GET /admin/config`, `GET /admin/keys/{name}/usage`,
//! `GET /admin/experiments[/{name}]`).
//!
//! Owns: the admin token check and those handlers. Must not: be reachable on the client port.

use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::AppState;
use super::error::GatewayError;
use super::routes::refuse_unread;
use crate::runtime::Snapshot;
use crate::runtime::reload::{self, Trigger};
use crate::wire::body::{self, Body};

pub async fn route(state: &Arc<AppState>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/metrics") => metrics(state),
        (&Method::GET, "/healthz") => body::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if state.is_ready() => body::text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/readyz") => body::text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        (_, path) if path.starts_with("/admin/") => {
            if !admin_authorized(state, &request) {
                return refuse_unread(request, GatewayError::AdminUnauthorized).await;
            }
            admin_route(state, request).await
        }
        _ => {
            let error = GatewayError::NotFound(path.to_owned());
            refuse_unread(request, error).await
        }
    }
}

/// `/admin/*` once the token was checked.
async fn admin_route(state: &Arc<AppState>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    if let Some(name) = key_usage_name(path) {
        return match *request.method() {
            Method::GET => key_usage(state, &name).await,
            ref method => {
                GatewayError::MethodNotAllowed { method: method.clone(), path: path.to_owned() }.to_response()
            }
        };
    }
    if path == "/admin/experiments" || path.starts_with("/admin/experiments/") {
        return match *request.method() {
            Method::GET => experiments(state, path.strip_prefix("/admin/experiments/")),
            ref method => {
                GatewayError::MethodNotAllowed { method: method.clone(), path: path.to_owned() }.to_response()
            }
        };
    }
    match (request.method(), path) {
        (&Method::POST, "/admin/reload") => match reload::reload(state, Trigger::Admin).await {
            Ok(outcome) => body::json(StatusCode::OK, reload::outcome_json(outcome, &state.snapshot()).to_string()),
            Err(err) => GatewayError::from(err).to_response(),
        },
        (&Method::GET, "/admin/config") => {
            body::json(StatusCode::OK, reload::config_view(&state.snapshot()).to_string())
        }
        (method, "/admin/reload" | "/admin/config") => {
            GatewayError::MethodNotAllowed { method: method.clone(), path: path.to_owned() }.to_response()
        }
        _ => GatewayError::NotFound(path.to_owned()).to_response(),
    }
}

/// `GET /admin/experiments` (every experiment) and `/admin/experiments/{name}` (one; 404
/// for a name the config does not have).
fn experiments(state: &AppState, name: Option<&str>) -> Response<Body> {
    let snapshot = state.snapshot();
    let view = |e: &crate::experiments::Experiment| {
        json!({
            "name": e.config.name,
            "model": e.config.model,
            "strategy": e.config.strategy.as_str(),
            "min_share": e.config.min_share,
            "promote": e.config.stop.promote,
            "promoted": e.promoted(),
            "store": if snapshot.config.state.store == crate::config::StateStore::Memory { "memory" } else { "redis" },
            "analysis": e.view().as_deref(),
        })
    };
    match name {
        None => {
            let all: Vec<_> = snapshot.experiments.iter().map(|e| view(e)).collect();
            body::json(StatusCode::OK, json!({"object": "list", "data": all}).to_string())
        }
        Some(name) => match snapshot.experiments.get(&percent_decode(name)) {
            Some(e) => body::json(StatusCode::OK, view(e).to_string()),
            None => GatewayError::ExperimentNotFound(percent_decode(name)).to_response(),
        },
    }
}

/// `GET /admin/keys/{name}/usage`: the key's windows, budget and totals; 404 for a key the
/// config does not have.
async fn key_usage(state: &AppState, name: &str) -> Response<Body> {
    let snapshot = state.snapshot();
    match snapshot.limits.usage(name).await {
        Some(usage) => body::json(StatusCode::OK, usage.to_string()),
        None => GatewayError::KeyNotFound(name.to_owned()).to_response(),
    }
}

/// The percent-decoded `{name}` of `/admin/keys/{name}/usage`.
fn key_usage_name(path: &str) -> Option<String> {
    let encoded = path.strip_prefix("/admin/keys/")?.strip_suffix("/usage")?;
    if encoded.is_empty() || encoded.contains('/') {
        return None;
    }
    Some(percent_decode(encoded))
}

/// A path segment with its `%XX` escapes decoded (invalid UTF-8 is replaced).
fn percent_decode(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| bytes.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn admin_authorized(state: &AppState, request: &Request<Incoming>) -> bool {
    bears_admin_token(&state.snapshot(), request.headers())
}

/// Constant-time check of `Authorization: Bearer <server.admin_token>`; no token configured
/// means nobody is admitted.
pub(super) fn bears_admin_token(snapshot: &Snapshot, headers: &http::HeaderMap) -> bool {
    let Some(expected) = snapshot.config.server.admin_token.as_deref() else { return false };
    let given = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    given.is_some_and(|given| bool::from(given.ct_eq(expected.as_bytes())))
}

/// Prometheus text exposition format 0.0.4.
fn metrics(state: &AppState) -> Response<Body> {
    let mut response = Response::new(body::full(state.snapshot().metrics.render()));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
