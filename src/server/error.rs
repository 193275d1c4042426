//! Every error weir answers with, mapped to HTTP in one place.
//!
//! Each module owns its error enum; [`GatewayError`] gathers them and [`GatewayError::to_response`]
//! turns any of them into OpenAI's error shape
//! `{"error": {"message", "type", "code", "param"}}`. The `match` in `describe` has no
//! catch-all arm, so a new error cannot ship without a status.
//!
//! Owns: [`GatewayError`] and its one exhaustive map to status, type, code and headers (the
//! request path's refusals and the admin port's errors included). Must not: be bypassed by a
//! hand-written error body anywhere else.

use bytes::Bytes;
use http::header::{CONNECTION, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::backends::BackendError;
use crate::datasets::feedback::FeedbackError;
use crate::limits::{LimitError, headers as rate_headers};
use crate::proxy::ProxyError;
use crate::proxy::inbound::InboundError;
use crate::router::{DispatchError, RouteError};
use crate::runtime::reload::ReloadError;
use crate::wire::RequestError;
use crate::wire::body::{self, Body};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Boxed: a refusal carries its rate headers.
    #[error(transparent)]
    Limit(Box<LimitError>),
    /// Boxed: an upstream rejection carries its body, and errors travel by value.
    #[error(transparent)]
    Backend(Box<BackendError>),
    #[error(transparent)]
    Feedback(#[from] FeedbackError),
    #[error("unknown path `{0}`")]
    NotFound(String),
    #[error("method {method} is not allowed on `{path}`")]
    MethodNotAllowed { method: http::Method, path: String },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("admin routes need `Authorization: Bearer <server.admin_token>`")]
    AdminUnauthorized,
    #[error("no key named `{0}` in the config")]
    KeyNotFound(String),
    /// `GET /admin/experiments/{name}` for an experiment the config does not have.
    #[error("no experiment named `{0}` (experiments are the `experiments:` entries of the config)")]
    ExperimentNotFound(String),
    /// `POST /admin/reload` rejected the config; the active one stays.
    #[error("config reload rejected, the active config stays: {0}")]
    Reload(#[from] ReloadError),
    /// A Responses or Messages request (or stored response) that cannot be served.
    #[error(transparent)]
    Inbound(#[from] InboundError),
}

impl From<LimitError> for GatewayError {
    fn from(err: LimitError) -> Self {
        GatewayError::Limit(Box::new(err))
    }
}

impl From<BackendError> for GatewayError {
    fn from(err: BackendError) -> Self {
        GatewayError::Backend(Box::new(err))
    }
}

impl From<DispatchError> for GatewayError {
    fn from(err: DispatchError) -> Self {
        match err {
            DispatchError::Route(err) => GatewayError::Route(err),
            DispatchError::Backend(err) => GatewayError::Backend(err),
        }
    }
}

/// The request path's refusals are the same errors, mapped the same way.
impl From<ProxyError> for GatewayError {
    fn from(err: ProxyError) -> Self {
        match err {
            ProxyError::Request(err) => GatewayError::Request(err),
            ProxyError::Auth(err) => GatewayError::Auth(err),
            ProxyError::Route(err) => GatewayError::Route(err),
            ProxyError::Limit(err) => GatewayError::Limit(err),
            ProxyError::Dispatch(err) => err.into(),
            ProxyError::Inbound(err) => GatewayError::Inbound(err),
        }
    }
}

/// The parts of an OpenAI error body.
struct Described {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
}

impl GatewayError {
    fn describe(&self) -> Described {
        use StatusCode as S;
        let plain = |status, kind, code| Described { status, kind, code, param: None };
        match self {
            GatewayError::Request(err) => match err {
                RequestError::BodyTooLarge { .. } => {
                    plain(S::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("request_too_large"))
                }
                RequestError::BodyRead(_) => plain(S::BAD_REQUEST, "invalid_request_error", Some("body_read_error")),
                RequestError::BodyTimeout(_) => {
                    plain(S::REQUEST_TIMEOUT, "invalid_request_error", Some("request_timeout"))
                }
                RequestError::BodiesOverBudget { .. } => {
                    plain(S::SERVICE_UNAVAILABLE, "api_error", Some("too_many_request_bodies"))
                }
                RequestError::InvalidJson(_) => plain(S::BAD_REQUEST, "invalid_request_error", Some("invalid_json")),
                RequestError::TooDeep { .. } => plain(S::BAD_REQUEST, "invalid_request_error", Some("json_too_deep")),
                RequestError::InvalidField { param, .. } => Described {
                    status: S::BAD_REQUEST,
                    kind: "invalid_request_error",
                    code: Some("invalid_value"),
                    param: Some(param.clone()),
                },
            },
            GatewayError::Auth(err) => match err {
                AuthError::MissingKey => plain(S::UNAUTHORIZED, "invalid_request_error", Some("missing_api_key")),
                AuthError::UnknownKey => plain(S::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key")),
                AuthError::ModelNotAllowed { .. } => Described {
                    status: S::FORBIDDEN,
                    kind: "invalid_request_error",
                    code: Some("model_not_allowed"),
                    param: Some("model".into()),
                },
            },
            GatewayError::Route(err) => match err {
                RouteError::UnknownModel { .. } => Described {
                    status: S::NOT_FOUND,
                    kind: "invalid_request_error",
                    code: Some("model_not_found"),
                    param: Some("model".into()),
                },
                RouteError::UnknownVariant { .. } => Described {
                    status: S::BAD_REQUEST,
                    kind: "invalid_request_error",
                    code: Some("variant_not_found"),
                    param: Some("x-weir-variant".into()),
                },
                RouteError::NoHealthyTarget { .. } => plain(S::BAD_GATEWAY, "api_error", Some("no_healthy_target")),
                RouteError::RateLimited { .. } => {
                    plain(S::TOO_MANY_REQUESTS, "rate_limit_error", Some("upstream_rate_limited"))
                }
            },
            // OpenAI's 429 bodies: `type` names the window (`requests`, `tokens`), a spent
            // budget is `insufficient_quota`.
            GatewayError::Limit(err) => match err.as_ref() {
                LimitError::Requests { .. } => plain(S::TOO_MANY_REQUESTS, "requests", Some("rate_limit_exceeded")),
                LimitError::Tokens { .. } | LimitError::TooLarge { .. } => {
                    plain(S::TOO_MANY_REQUESTS, "tokens", Some("rate_limit_exceeded"))
                }
                LimitError::Invalid { param, .. } => Described {
                    status: S::BAD_REQUEST,
                    kind: "invalid_request_error",
                    code: Some("invalid_value"),
                    param: Some((*param).into()),
                },
                LimitError::Concurrent { .. } => {
                    plain(S::TOO_MANY_REQUESTS, "requests", Some("concurrency_limit_exceeded"))
                }
                LimitError::Budget { .. } => {
                    plain(S::TOO_MANY_REQUESTS, "insufficient_quota", Some("insufficient_quota"))
                }
                LimitError::Unavailable { .. } => {
                    plain(S::SERVICE_UNAVAILABLE, "api_error", Some("limits_unavailable"))
                }
            },
            GatewayError::Backend(err) => match err.as_ref() {
                BackendError::Connect { .. } => plain(S::BAD_GATEWAY, "api_error", Some("upstream_connect_error")),
                BackendError::Timeout { .. } => plain(S::GATEWAY_TIMEOUT, "api_error", Some("upstream_timeout")),
                BackendError::Saturated { .. } => {
                    plain(S::SERVICE_UNAVAILABLE, "api_error", Some("backend_overloaded"))
                }
                BackendError::Protocol { .. } => plain(S::BAD_GATEWAY, "api_error", Some("upstream_error")),
                BackendError::Rejected { status, .. } if status.is_client_error() => {
                    plain(*status, "invalid_request_error", None)
                }
                BackendError::Rejected { .. } => plain(S::BAD_GATEWAY, "api_error", Some("upstream_error")),
                BackendError::Unsupported { param, .. } => Described {
                    status: S::BAD_REQUEST,
                    kind: "invalid_request_error",
                    code: Some("unsupported_parameter"),
                    param: param.clone(),
                },
            },
            GatewayError::Feedback(err) => match err {
                FeedbackError::UnknownRequest(_) => Described {
                    status: S::NOT_FOUND,
                    kind: "invalid_request_error",
                    code: Some("request_not_found"),
                    param: Some("request_id".into()),
                },
            },
            GatewayError::NotFound(_) => plain(S::NOT_FOUND, "invalid_request_error", Some("unknown_url")),
            GatewayError::MethodNotAllowed { .. } => {
                plain(S::METHOD_NOT_ALLOWED, "invalid_request_error", Some("method_not_allowed"))
            }
            GatewayError::Internal(_) => plain(S::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error")),
            GatewayError::AdminUnauthorized => {
                plain(S::UNAUTHORIZED, "invalid_request_error", Some("invalid_admin_token"))
            }
            GatewayError::KeyNotFound(_) => plain(S::NOT_FOUND, "invalid_request_error", Some("key_not_found")),
            GatewayError::ExperimentNotFound(_) => {
                plain(S::NOT_FOUND, "invalid_request_error", Some("experiment_not_found"))
            }
            GatewayError::Inbound(err) => match err {
                InboundError::Invalid(invalid) => Described {
                    status: S::BAD_REQUEST,
                    kind: "invalid_request_error",
                    code: Some("invalid_value"),
                    param: Some(invalid.param.clone()).filter(|p| !p.is_empty()),
                },
                InboundError::PreviousNotFound(_) => Described {
                    status: S::NOT_FOUND,
                    kind: "invalid_request_error",
                    code: Some("previous_response_not_found"),
                    param: Some("previous_response_id".into()),
                },
                InboundError::NotFound(_) => plain(S::NOT_FOUND, "invalid_request_error", Some("response_not_found")),
                InboundError::Store(_) => plain(S::SERVICE_UNAVAILABLE, "api_error", Some("state_store_unavailable")),
            },
            GatewayError::Reload(err) => match err {
                ReloadError::Invalid(_) | ReloadError::Tls(_) | ReloadError::Backend(_) | ReloadError::Bind { .. } => {
                    plain(S::BAD_REQUEST, "invalid_request_error", Some("invalid_config"))
                }
                ReloadError::NoSource => plain(S::CONFLICT, "invalid_request_error", Some("reload_unavailable")),
                ReloadError::Internal(_) => plain(S::INTERNAL_SERVER_ERROR, "server_error", Some("internal_error")),
            },
        }
    }

    /// The OpenAI-shaped response. A backend's own 4xx answer keeps its body when that body
    /// already is an OpenAI error, so the client sees exactly what the provider said.
    pub fn to_response(&self) -> Response<Body> {
        let described = self.describe();
        if let GatewayError::Backend(backend) = self
            && let BackendError::Rejected { status, body, retry_after, .. } = backend.as_ref()
            && status.is_client_error()
        {
            let bytes = if is_openai_error(body) { body.clone() } else { error_json(&described, &self.to_string()) };
            let mut response = body::json(*status, bytes);
            if let Some(retry_after) = retry_after {
                response.headers_mut().insert(RETRY_AFTER, retry_after.clone());
            }
            return response;
        }
        if let GatewayError::Reload(err) = self {
            // The admin's view: the outcome and every problem on its own, besides the usual shape.
            let error =
                json!({"message": self.to_string(), "type": described.kind, "code": described.code, "param": null});
            let body = json!({"outcome": "rejected", "errors": err.problems(), "error": error});
            return body::json(described.status, body.to_string());
        }
        let mut response = body::json(described.status, error_json(&described, &self.to_string()));
        if let GatewayError::Limit(limit) = self {
            let headers = response.headers_mut();
            if let Some(wait) = limit.retry_after() {
                headers.insert(RETRY_AFTER, rate_headers::retry_after(wait));
            }
            if let Some(view) = limit.view() {
                view.apply(headers);
            }
        }
        if let GatewayError::Backend(backend) = self
            && matches!(backend.as_ref(), BackendError::Saturated { .. })
        {
            response.headers_mut().insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        if let GatewayError::Request(err) = self
            && body_left_unread(err)
        {
            // The rest of the body is still on its way: the connection cannot carry another
            // request, and saying so spares the client a reused connection closed under it.
            response.headers_mut().insert(CONNECTION, http::HeaderValue::from_static("close"));
            if matches!(err, RequestError::BodiesOverBudget { .. }) {
                response.headers_mut().insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
            }
        }
        if let GatewayError::Route(RouteError::RateLimited { retry_after, .. }) = self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

/// Refusals made while the request body was still arriving.
fn body_left_unread(err: &RequestError) -> bool {
    match err {
        RequestError::BodyTooLarge { .. }
        | RequestError::BodyRead(_)
        | RequestError::BodyTimeout(_)
        | RequestError::BodiesOverBudget { .. } => true,
        RequestError::InvalidJson(_) | RequestError::TooDeep { .. } | RequestError::InvalidField { .. } => false,
    }
}

impl GatewayError {
    /// The response in the Anthropic Messages API's shape (`{"type":"error","error":{type,
    /// message}}`, the type Anthropic uses for the status), with the same status and headers
    /// as [`GatewayError::to_response`]. A backend's own error keeps its message.
    pub fn to_anthropic_response(&self) -> Response<Body> {
        let mut response = self.to_response();
        let message = match self {
            GatewayError::Backend(backend) => match backend.as_ref() {
                BackendError::Rejected { status, body, .. } if status.is_client_error() => {
                    upstream_error_message(body).unwrap_or_else(|| self.to_string())
                }
                _ => self.to_string(),
            },
            _ => self.to_string(),
        };
        let kind = crate::apis::messages::response::error_type(response.status().as_u16());
        let body = crate::apis::messages::response::error_body(kind, &message);
        *response.body_mut() = body::full(body.to_string());
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        response
    }
}

/// `error.message` of an OpenAI- or Anthropic-shaped error body.
fn upstream_error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.get("message")?.as_str().map(str::to_owned)
}

fn error_json(described: &Described, message: &str) -> Bytes {
    let body = json!({"error": {"message": message, "type": described.kind, "code": described.code, "param": described.param}});
    Bytes::from(body.to_string())
}

fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| v.get("error").is_some_and(Value::is_object))
}
