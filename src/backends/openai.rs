//! `kind: openai`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, ...).
//!
//! A pass-through: the body goes upstream as the proxy prepared it (only the model name was
//! changed), the answer comes back byte for byte.

use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use super::client::{HttpClient, UpstreamBody, build_client};
use super::{BackendBuildError, BackendCall, BackendError, BackendResponse, UpstreamAuth};
use crate::config::BackendConfig;
use crate::proxy::Endpoint;

#[derive(Debug)]
pub struct OpenAiBackend {
    client: HttpClient,
    /// Upstream URLs, parsed once per snapshot rather than per request.
    chat_url: Uri,
    completions_url: Uri,
    embeddings_url: Uri,
    /// `Bearer <api_key>`, ready to send; marked sensitive so it never shows in debug output.
    authorization: Option<HeaderValue>,
}

impl OpenAiBackend {
    pub fn new(config: &BackendConfig, client: Option<HttpClient>) -> Result<Self, BackendBuildError> {
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
        Ok(OpenAiBackend {
            client: client.unwrap_or_else(|| build_client(config.timeouts.connect)),
            chat_url: url("/chat/completions")?,
            completions_url: url("/completions")?,
            embeddings_url: url("/embeddings")?,
            authorization,
        })
    }

    /// The pool, for a reload to carry over.
    pub fn client(&self) -> HttpClient {
        self.client.clone()
    }

    pub async fn send(&self, config: &BackendConfig, call: BackendCall<'_>) -> Result<BackendResponse, BackendError> {
        let uri = match call.endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
            Endpoint::Embeddings => &self.embeddings_url,
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .body(Full::new(call.body))
            .map_err(|err| BackendError::Protocol { backend: config.name.clone(), detail: err.to_string() })?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if call.stream {
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Ok(id) = HeaderValue::from_str(call.request_id) {
            headers.insert("x-request-id", id);
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

        let response = self.client.request(request).await.map_err(|err| classify_client_error(&config.name, &err))?;
        let (parts, body) = response.into_parts();
        Ok(BackendResponse {
            status: parts.status,
            headers: passed_on_headers(&parts.headers),
            body: UpstreamBody::Http(body),
            permit: None,
        })
    }
}

/// Only headers that mean something to the client survive; hop-by-hop headers and the
/// upstream's own rate-limit headers (weir sends the key's) do not.
fn passed_on_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(2);
    for name in [CONTENT_TYPE, RETRY_AFTER] {
        if let Some(value) = upstream.get(&name) {
            kept.insert(name, value.clone());
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
