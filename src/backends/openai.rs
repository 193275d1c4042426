//! `kind: openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...).
//!
//! A pass-through: the body goes upstream as the proxy prepared it (only the model name was
//! changed), the answer comes back byte for byte.

use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

use super::client::{HttpClient, UpstreamBody, build_client};
use super::pool::H1Pool;
use super::{BackendBuildError, BackendCall, BackendError, BackendResponse, UpstreamAuth};
use crate::config::BackendConfig;
use crate::headers::X_REQUEST_ID;
use crate::proxy::Endpoint;
use crate::telemetry::trace::TRACEPARENT;

/// How requests reach the upstream.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `http://`: weir's own HTTP/1.1 pool, driven by the request's task.
    Plain(Arc<H1Pool>),
    /// `https://`: hyper_util's client, for TLS and HTTP/2 by ALPN.
    Tls(Arc<HttpClient>),
}

#[derive(Debug)]
pub struct OpenAiBackend {
    transport: Transport,
    /// Upstream URLs, parsed once per snapshot rather than per request.
    chat_url: Uri,
    completions_url: Uri,
    embeddings_url: Uri,
    /// `Bearer <api_key>`, ready to send; marked sensitive so it never shows in debug output.
    authorization: Option<HeaderValue>,
    /// `Host`, from the base URL.
    host: Option<HeaderValue>,
}

impl OpenAiBackend {
    pub fn new(config: &BackendConfig, transport: Option<Transport>) -> Result<Self, BackendBuildError> {
        let url = |path: &str| -> Result<Uri, BackendBuildError> {
            format!("{}{}", config.base_url, path).parse().map_err(|err: http::uri::InvalidUri| {
                BackendBuildError::BadUrl { backend: config.name.clone(), detail: err.to_string() }
            })
        };
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value =
                    HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| BackendBuildError::BadUrl {
                        backend: config.name.clone(),
                        detail: "api_key is not a valid header value".into(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let chat_url = url("/chat/completions")?;
        let transport = match transport {
            Some(Transport::Plain(pool)) if chat_url.scheme() != Some(&http::uri::Scheme::HTTP) => {
                drop(pool);
                Transport::Tls(Arc::new(build_client(config.timeouts.connect)))
            }
            Some(transport) => transport,
            None if chat_url.scheme() == Some(&http::uri::Scheme::HTTP) => {
                let host = chat_url.host().unwrap_or("localhost");
                let authority = format!("{host}:{}", chat_url.port_u16().unwrap_or(80));
                Transport::Plain(Arc::new(H1Pool::new(authority, config.timeouts.connect)))
            }
            None => Transport::Tls(Arc::new(build_client(config.timeouts.connect))),
        };
        let host = chat_url.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        Ok(OpenAiBackend {
            transport,
            chat_url,
            completions_url: url("/completions")?,
            embeddings_url: url("/embeddings")?,
            authorization,
            host,
        })
    }

    /// The connection pool, for a reload to carry over.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    pub async fn send(&self, config: &BackendConfig, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let uri = match call.endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
            Endpoint::Embeddings => &self.embeddings_url,
        };
        let build = || self.request(config, uri, &call);
        match &self.transport {
            Transport::Plain(pool) => {
                let (response, conn) = pool.send(build).await.map_err(|err| match err.connect {
                    true => BackendError::Connect { backend: config.name.clone(), detail: err.detail },
                    false => BackendError::Protocol { backend: config.name.clone(), detail: err.detail },
                })?;
                let (parts, body) = response.into_parts();
                Ok(BackendResponse {
                    status: parts.status,
                    headers: passed_on_headers(parts.status, &parts.headers),
                    body: UpstreamBody::Pooled(body, conn),
                    permit: None,
                })
            }
            Transport::Tls(client) => {
                let response =
                    client.request(build()).await.map_err(|err| classify_client_error(&config.name, &err))?;
                let (parts, body) = response.into_parts();
                Ok(BackendResponse {
                    status: parts.status,
                    headers: passed_on_headers(parts.status, &parts.headers),
                    body: UpstreamBody::Http(body),
                    permit: None,
                })
            }
        }
    }

    /// The upstream request: the prepared body, our credentials and the backend's headers.
    fn request(&self, config: &BackendConfig, uri: &Uri, call: &BackendCall<'_>) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(call.body.clone()));
        *request.method_mut() = Method::POST;
        // Our own HTTP/1.1 connections send the origin form (`/v1/chat/completions`);
        // hyper_util's client derives it from the absolute URI itself.
        *request.uri_mut() = match (&self.transport, uri.path_and_query()) {
            (Transport::Plain(_), Some(path)) => Uri::from(path.clone()),
            _ => uri.clone(),
        };
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(host) = &self.host {
            headers.insert(http::header::HOST, host.clone());
        }
        if call.stream {
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
        if let Some(traceparent) = &call.traceparent {
            headers.insert(TRACEPARENT, traceparent.clone());
        }
        let authorization = match call.auth {
            UpstreamAuth::Backend => self.authorization.as_ref(),
            UpstreamAuth::Client(client) => client,
        };
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        for (name, value) in &config.headers {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// Only headers that mean something to the client survive; hop-by-hop headers and the
/// upstream's own rate-limit headers (weir sends the key's) do not. A failed answer also
/// keeps the upstream's rate-limit resets: the router reads them to know how long to leave
/// the target alone (they are never relayed, error answers are rebuilt).
fn passed_on_headers(status: http::StatusCode, upstream: &HeaderMap) -> HeaderMap {
    // Room for the headers the proxy adds, so they go in without a reallocation.
    let mut kept = HeaderMap::with_capacity(8);
    for name in [CONTENT_TYPE, RETRY_AFTER] {
        if let Some(value) = upstream.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    if !status.is_success() {
        for name in crate::router::RETRY_HINT_HEADERS {
            if let Some(value) = upstream.get(&name) {
                kept.insert(name, value.clone());
            }
        }
    }
    kept
}

fn classify_client_error(backend: &str, err: &hyper_util::client::legacy::Error) -> BackendError {
    let detail = error_chain(err);
    if err.is_connect() {
        BackendError::Connect { backend: backend.to_owned(), detail }
    } else {
        BackendError::Protocol { backend: backend.to_owned(), detail }
    }
}

/// `outer: inner: root` — hyper's top-level messages alone ("client error (Connect)") hide the cause.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
