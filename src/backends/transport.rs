//! The HTTP transport shared by the kinds that call an upstream over HTTP (`openai`,
//! `azure`, `anthropic`): which client carries a request, the headers every upstream request
//! gets, and which response headers are passed on.
//!
//! Must not: know any provider's URLs, credentials or body shapes (each kind's own file).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;

use super::client::{HttpClient, UpstreamBody, build_client};
use super::pool::H1Pool;
use super::{BackendBuildError, BackendCall, BackendError};
use crate::config::BackendConfig;
use crate::wire::headers::TRACEPARENT;
use crate::wire::headers::X_REQUEST_ID;

/// How requests reach the upstream.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `http://`: weir's own HTTP/1.1 pool, driven by the request's task.
    Plain(Arc<H1Pool>),
    /// `https://`: hyper_util's client, for TLS and HTTP/2 by ALPN.
    Tls(Arc<HttpClient>),
}

/// One backend's way upstream: the transport and the `Host` it talks to.
#[derive(Debug)]
pub struct HttpUpstream {
    transport: Transport,
    /// `Host`, from the base URL.
    host: Option<HeaderValue>,
}

/// An upstream answer whose head has arrived.
pub struct Answered {
    pub status: StatusCode,
    /// Only the headers worth passing on (see [`passed_on_headers`]).
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

impl HttpUpstream {
    /// The transport for requests to `url`'s origin, reusing `previous` (a reload's pool)
    /// when it still fits the scheme.
    pub fn new(
        config: &BackendConfig,
        url: &Uri,
        previous: Option<Transport>,
    ) -> Result<HttpUpstream, BackendBuildError> {
        let plain = url.scheme() == Some(&http::uri::Scheme::HTTP);
        let tls =
            || build_client(config.timeouts.connect, config.ca_file.as_deref()).map(|c| Transport::Tls(Arc::new(c)));
        let transport = match previous {
            Some(Transport::Plain(_)) if !plain => tls(),
            Some(Transport::Tls(_)) if plain => Ok(plain_pool(url, config.timeouts.connect)),
            Some(transport) => Ok(transport),
            None if plain => Ok(plain_pool(url, config.timeouts.connect)),
            None => tls(),
        };
        let transport = transport.map_err(|err| BackendBuildError::BadCa {
            backend: config.name.clone(),
            path: config.ca_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            detail: err.to_string(),
        })?;
        let host = url.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        Ok(HttpUpstream { transport, host })
    }

    /// The connection pool, for a reload to carry over.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// A POST of `body` to `uri` with the headers every kind sends: content type, `Host`,
    /// `Accept` for streams, the request id and the trace context. Credentials and the backend's extra headers
    /// are the caller's (see [`finish_headers`]).
    pub fn post(&self, uri: &Uri, body: Bytes, call: &BackendCall<'_>) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
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
            headers.insert(HOST, host.clone());
        }
        if call.stream {
            headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
        if let Some(traceparent) = &call.traceparent {
            headers.insert(TRACEPARENT, traceparent.clone());
        }
        request
    }

    /// Sends the request `build` makes (again, if a reused pooled connection was dead) and
    /// returns once the response head has arrived.
    pub async fn send(
        &self,
        backend: &str,
        build: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<Answered, BackendError> {
        match &self.transport {
            Transport::Plain(pool) => {
                let (response, conn) = pool.send(build).await.map_err(|err| match err.connect {
                    true => BackendError::Connect { backend: backend.to_owned(), detail: err.detail },
                    false => BackendError::Protocol { backend: backend.to_owned(), detail: err.detail },
                })?;
                let (parts, body) = response.into_parts();
                let headers = passed_on_headers(parts.status, &parts.headers);
                Ok(Answered { status: parts.status, headers, body: UpstreamBody::Pooled(body, conn) })
            }
            Transport::Tls(client) => {
                let response = client.request(build()).await.map_err(|err| classify_client_error(backend, &err))?;
                let (parts, body) = response.into_parts();
                let headers = passed_on_headers(parts.status, &parts.headers);
                Ok(Answered { status: parts.status, headers, body: UpstreamBody::Http(body) })
            }
        }
    }
}

fn plain_pool(url: &Uri, connect: Duration) -> Transport {
    let host = url.host().unwrap_or("localhost");
    let authority = format!("{host}:{}", url.port_u16().unwrap_or(80));
    Transport::Plain(Arc::new(H1Pool::new(authority, connect)))
}

/// Adds the credential (when there is one) and then the backend's configured `headers`,
/// which come last so that a config can override anything weir sets (`anthropic-version`,
/// `User-Agent`, ...).
pub fn finish_headers(headers: &mut HeaderMap, credential: Option<(HeaderName, HeaderValue)>, config: &BackendConfig) {
    if let Some((name, value)) = credential {
        headers.insert(name, value);
    }
    for (name, value) in &config.headers {
        headers.insert(name.clone(), value.clone());
    }
}

/// A secret as a header value, marked sensitive so it never shows in debug output.
pub fn secret_header(backend: &str, value: String) -> Result<HeaderValue, super::BackendBuildError> {
    let mut value = HeaderValue::try_from(value).map_err(|_| super::BackendBuildError::BadUrl {
        backend: backend.to_owned(),
        detail: "api_key is not a valid header value".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Parses `{base_url}{path}` once per snapshot.
pub fn parse_url(config: &BackendConfig, path: &str) -> Result<Uri, super::BackendBuildError> {
    format!("{}{}", config.base_url, path).parse().map_err(|err: http::uri::InvalidUri| {
        super::BackendBuildError::BadUrl { backend: config.name.clone(), detail: err.to_string() }
    })
}

/// Only headers that mean something to the client survive; hop-by-hop headers and the
/// upstream's own rate-limit headers (weir sends the key's) do not. The values kept are
/// copies: hyper's header values are slices of the connection's read buffer, and one kept
/// for a stream's life would make the connection allocate a fresh buffer for every read.
pub fn passed_on_headers(status: http::StatusCode, upstream: &HeaderMap) -> HeaderMap {
    // Room for the headers the proxy adds, so they go in without a reallocation.
    let mut kept = HeaderMap::with_capacity(8);
    for name in [CONTENT_TYPE, RETRY_AFTER] {
        if let Some(value) = upstream.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    // A failed answer also keeps the upstream's rate-limit resets: the router reads them to
    // know how long to leave the target alone (never relayed: error answers are rebuilt).
    if !status.is_success() {
        for name in crate::wire::headers::RETRY_HINT_HEADERS {
            if let Some(value) = upstream.get(&name) {
                kept.insert(name, value.clone());
            }
        }
    }
    crate::wire::headers::detach_values(&mut kept);
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
